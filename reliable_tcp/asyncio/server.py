"""The listening side on the event loop: handshakes, ``accept`` and ``serve``.

The same decisions as the threaded listener, made once in
``common/listener.py`` (who may open or resume a session, what a refusal
says, the restore after a restart, what is offered to ``accept()``); this
file reads, writes and waits: a refusal is REJECT, FIN, and a short wait
for the peer's.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Unpack

from ..common.listener import HANDED_OVER, ListenerBook, log_refusal, read_hello
from ..common.options import ListenOptions, ShellOptions, resolve_options
from ..common.sockets import configure_socket, input_waits
from ..common.status import ListenerStatistics
from ..common.timing import DRAIN_CLOSE_RESERVE, DRAIN_LINGER, REJECT_LINGER
from ..core.config import SessionConfig
from ..core.engine import SessionEngine
from ..core.frames import Hello, RejectReason
from ..core.handshake import ServerHandshake, reject_reply
from ..durable.session_journal import Durable
from ..exceptions import ChannelClosed, HandshakeRejected, ReliableTCPError
from ._link import NO_OWNER, LinkProtocol
from ._session import LoopSession
from ._signal import Signal
from .channel import Channel

__all__ = ["Listener", "Server", "listen", "serve"]

logger = logging.getLogger(__name__)


class _Handshake:
    """Owns a new connection until its HELLO is accepted (then the channel does)."""

    def __init__(self, listener: Listener, link: LinkProtocol) -> None:
        self._listener = listener
        self._link = link
        self._reader = ServerHandshake(listener._config.psk)
        self._timer = asyncio.get_running_loop().call_later(listener._config.handshake_timeout, self._timed_out)
        self.done = False

    def link_data(self, link: LinkProtocol, data: bytes) -> None:
        if self.done:
            return
        hello, challenge, refusal = read_hello(self._reader, data)
        if refusal is not None:
            self._refuse(refusal)
            return
        if challenge:
            link.write([challenge])
        if hello is None:
            return
        self._finish()
        if _peer_gone(link):
            logger.info("the client already left; ignored")
            link.close(abort=True)
            return
        refusal = self._listener._admit(link, hello)
        if refusal is not None:
            self._refuse(refusal, finished=True)

    def link_lost(self, link: LinkProtocol, error: BaseException | None) -> None:
        self._finish()

    def link_writable(self, link: LinkProtocol) -> None:
        pass

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            self._timer.cancel()
            self._listener._pending.discard(self._link)

    def _timed_out(self) -> None:
        if not self.done:
            self._refuse(HandshakeRejected(RejectReason.HANDSHAKE_TIMEOUT, "no HELLO in time"))

    def _refuse(self, refusal: HandshakeRejected, *, finished: bool = False) -> None:
        """REJECT, then FIN, then (a moment later) the close."""
        if not finished:
            self._finish()
        self._listener._book.rejected_handshakes += 1
        log_refusal(logger, "", refusal)
        self._link.write([reject_reply(refusal)])
        self._link.end_after_reject(asyncio.get_running_loop(), REJECT_LINGER)


def _peer_gone(link: LinkProtocol) -> bool:
    """Whether the client already closed this connection (an EOF waits)."""
    transport = link.transport
    sock = None if transport is None else transport.get_extra_info("socket")
    return sock is not None and input_waits(sock)


class Listener:
    """Accepts connections and sessions on the event loop; see :class:`reliable_tcp.Listener`."""

    def __init__(
        self,
        config: SessionConfig,
        shell: ShellOptions,
        *,
        max_sessions: int = 1024,
        max_pending_handshakes: int = 64,
        node_id: int | None = None,
        journal: str | None = None,
    ) -> None:
        self._book: ListenerBook[LoopSession] = ListenerBook(config, max_sessions=max_sessions, node_id=node_id, journal=journal)
        self._config = self._book.config
        self._shell = shell
        self._max_pending = max_pending_handshakes
        self._changed = Signal()
        self._pending: set[LinkProtocol] = set()
        self._order = itertools.count(1)
        self._restorable: list[Durable] = []
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] = ("", 0)

    async def _start(self, address: tuple[str, int], backlog: int) -> None:
        # As the threaded listener: bind first, then restore the journaled
        # sessions, then accept (so a resume finds its session); a failure at
        # any step releases what the steps before took.
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            self._new_connection, address[0], address[1], ssl=self._shell.ssl_context, backlog=backlog,
            reuse_address=True, start_serving=False,
        )
        try:
            journal = self._book.journal
            if journal is not None:
                durables = await loop.run_in_executor(None, Durable.open_all_for_listener, journal, self._config)
                self._book.restore(durables, self._restored_channel)
        except BaseException:
            server.close()
            raise
        self._server = server
        bound = server.sockets[0].getsockname()
        self.address = (bound[0], bound[1])
        await server.start_serving()

    def _restored_channel(self, engine: SessionEngine, durable: Durable) -> LoopSession:
        session = LoopSession(engine, self._shell, durable=durable, restored=True, on_end=self._session_ended)
        Channel(session)
        return session

    def _new_connection(self) -> LinkProtocol:
        link = LinkProtocol(NO_OWNER, order=next(self._order))
        if self._book.closed:
            self._book.rejected_handshakes += 1
            link.refuse_when_made = True
            return link
        if len(self._pending) >= self._max_pending:
            self._book.rejected_handshakes += 1
            logger.warning("too many pending handshakes; refused with a retry hint")
            link.reject_when_made = reject_reply(self._book.too_many_handshakes())
            return link
        self._pending.add(link)
        link.owner = _Handshake(self, link)
        asyncio.get_running_loop().call_soon(self._configure, link)
        return link

    def _configure(self, link: LinkProtocol) -> None:
        sock = None if link.transport is None else link.transport.get_extra_info("socket")
        if sock is not None:
            configure_socket(sock, self._config)

    def _admit(self, link: LinkProtocol, hello: Hello) -> HandshakeRejected | None:
        """Start or resume the session ``hello`` names (ListenerBook decides);
        the refusal, if it may not."""
        book = self._book
        if hello.resume:
            target = book.resume_target(hello)
            if isinstance(target, HandshakeRejected):
                return target
            try:
                target.open_link(link, hello=hello, new_secret=book.registry.new_secret())
            except HandshakeRejected as rejected:
                return rejected
            return None
        started = book.start(hello, asyncio.get_running_loop().time())
        if isinstance(started, HandshakeRejected):
            return started
        engine = started
        durable = None
        path = book.journal_path(engine)
        if path is not None:
            try:
                durable = Durable.open(path, self._config)
            except (OSError, ReliableTCPError) as exc:
                return book.journal_failed(engine, exc)
        session = LoopSession(engine, self._shell, durable=durable, on_end=self._session_ended, on_confirmed=self._offer)
        Channel(session)
        book.add(engine, session)
        session.open_link(link)
        return None

    def _offer(self, session: LoopSession) -> None:
        if self._book.offer(session):
            self._changed.fire()

    def _session_ended(self, session: LoopSession) -> None:
        self._book.ended(session)
        self._changed.fire()  # a drain waits for the last one

    async def accept(self) -> Channel:
        """The next new session (cancel to stop waiting: nothing is taken).
        Raises ChannelClosed once the listener is closed."""
        book = self._book
        while not book.offered:
            if book.closed:
                raise ChannelClosed("the listener is closed")
            await self._changed.wait(None)
        channel = book.offered.popleft().channel
        assert channel is not None  # every session the listener makes has its channel
        return channel

    def statistics(self) -> ListenerStatistics:
        """A frozen snapshot of the listener's counters."""
        return self._book.statistics(len(self._pending))

    @property
    def draining(self) -> bool:
        """Whether :meth:`drain` has begun (new sessions are refused from then on)."""
        return self._book.draining is not None

    @property
    def session_count(self) -> int:
        """Sessions currently registered."""
        return len(self._book.registry)

    async def drain(self, timeout: float = 30.0, *, retry_after: float = 5.0, rate: float | None = None) -> None:
        """Empty the listener before a planned restart, then close it (see
        :meth:`reliable_tcp.Listener.drain`)."""
        if self._book.closed:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sessions, pace = self._book.drain(retry_after, timeout=timeout, rate=rate)
        logger.info("listener on port %d: draining %d sessions", self.address[1], len(sessions))
        if self._book.journal is None:
            waiting = deadline - min(DRAIN_CLOSE_RESERVE, timeout / 4)  # time left for the close handshakes
            while self._book.channels and not self._book.closed:
                if not await self._changed.wait(waiting):
                    break
            await self._shut(deadline, end_sessions=True)
            return
        started = loop.time()
        for number, session in enumerate(sessions):
            delay = started + number * pace - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._book.closed or loop.time() >= deadline:
                break
            session.move_away("the listener is draining before a restart")
        # The last ones moved get their resume refused with the hint too, rather than a closed port.
        linger = min(DRAIN_LINGER, deadline - loop.time())
        if linger > 0 and not self._book.closed:
            await asyncio.sleep(linger)
        await self._shut(deadline, end_sessions=False)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop accepting and end every session within ``timeout`` (see
        :meth:`reliable_tcp.Listener.close`)."""
        await self._shut(asyncio.get_running_loop().time() + timeout, end_sessions=True)

    async def _shut(self, deadline: float, *, end_sessions: bool) -> None:
        """Close: end every session (``end_sessions``), or release each
        unchanged in its journal for the restarted listener (a drain)."""
        if self._book.closed:
            return
        sessions = self._book.close()
        self._changed.fire()
        loop = asyncio.get_running_loop()
        if self._server is not None:
            self._server.close()
        for link in list(self._pending):
            link.close(abort=True)
        if end_sessions:
            for session in sessions:
                session.begin_close()
            await asyncio.gather(*(session.finish_close(deadline, reported=False) for session in sessions))
        else:
            await asyncio.gather(*(session.hand_over(deadline, HANDED_OVER) for session in sessions))
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), max(0.1, deadline - loop.time()))
            except TimeoutError:
                pass

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class _Listening:
    """What :func:`listen` returns: await it, or use it with ``async with``."""

    def __init__(self, coroutine: Any) -> None:
        self._coroutine = coroutine
        self._listener: Listener | None = None

    def __await__(self) -> Any:
        return self._coroutine.__await__()

    async def __aenter__(self) -> Listener:
        self._listener = await self._coroutine
        return self._listener

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._listener is not None
        await self._listener.close()


def listen(
    address: tuple[str, int],
    *,
    journal: str | None = None,
    config: SessionConfig | None = None,
    shell: ShellOptions | None = None,
    **options: Unpack[ListenOptions],
) -> _Listening:
    """Listen on ``address`` (``await`` it, or ``async with`` it); the same
    options as :func:`reliable_tcp.listen`."""
    return _Listening(_listen(address, journal=journal, config=config, shell=shell, options=options))


async def _listen(
    address: tuple[str, int], *, journal: str | None, config: SessionConfig | None, shell: ShellOptions | None, options: Any
) -> Listener:
    resolved, shell_options, extra = resolve_options(
        options, config, shell, extra=("max_sessions", "max_pending_handshakes", "backlog", "node_id")
    )
    backlog = extra.pop("backlog", 128)
    listener = Listener(resolved, shell_options, journal=journal, **extra)
    await listener._start((address[0], int(address[1])), backlog)
    return listener


class Server:
    """A listener whose every new session runs ``handler(channel)`` as a task.

    When the handler returns, its channel is closed gracefully; when it
    raises, the channel is aborted and the error logged. ``close()`` ends
    every session, then waits for the handlers (cancelling those still
    running at its timeout)."""

    def __init__(self, listener: Listener, handler: Callable[[Channel], Awaitable[None]]) -> None:
        self.listener = listener
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self._acceptor = asyncio.ensure_future(self._accept_loop())

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens."""
        return self.listener.address

    async def _accept_loop(self) -> None:
        while True:
            try:
                channel = await self.listener.accept()
            except ChannelClosed:
                return
            task = asyncio.ensure_future(self._run(channel))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, channel: Channel) -> None:
        # The session lives as long as its handler: a handler that returns
        # closes it gracefully (what it sent is delivered first), one that
        # fails aborts it, and the owner of anything lost is told in the log.
        try:
            await self._handler(channel)
        except asyncio.CancelledError:
            channel.abort()
            raise
        except Exception:
            logger.exception("handler for %r failed", channel)
            channel.abort()
            return
        try:
            await channel.close()
        except ReliableTCPError as exc:
            logger.warning("%r ended badly after its handler returned: %s", channel, exc)

    async def serve_forever(self) -> None:
        """Serve until cancelled or closed."""
        await asyncio.shield(self._acceptor)

    async def drain(self, timeout: float = 30.0, *, retry_after: float = 5.0, rate: float | None = None) -> None:
        """Empty the listener before a planned restart (:meth:`Listener.drain`),
        then wait for the handlers as :meth:`close` does."""
        await self.listener.drain(timeout, retry_after=retry_after, rate=rate)
        await self.close()

    async def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, end every session, and wait for the handlers."""
        await self.listener.close(timeout)
        self._acceptor.cancel()
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in late:  # a handler that ignores its ended channel does not hold close up
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def serve(
    handler: Callable[[Channel], Awaitable[None]],
    address: tuple[str, int],
    *,
    journal: str | None = None,
    config: SessionConfig | None = None,
    shell: ShellOptions | None = None,
    **options: Unpack[ListenOptions],
) -> Server:
    """Listen on ``address`` and run ``handler(channel)`` as a task for each new session."""
    listener = await _listen(address, journal=journal, config=config, shell=shell, options=options)
    return Server(listener, handler)
