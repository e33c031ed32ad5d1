"""The listening side on the event loop: handshakes, the registry, ``accept`` and ``serve``.

The same pure pieces as the threaded listener (``ServerHandshake`` for the
HELLO, CHALLENGE and PROOF, ``SessionRegistry``, ``SessionEngine.resume``),
the same rules: a new session is offered once its client confirmed it; a
resume older than the session's current connection, or one whose client
already left, can't take the session over; a refusal is REJECT, FIN, and a
short wait for the peer's.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Unpack

from ..common.options import ListenOptions, ShellOptions, resolve_options
from ..common.sockets import configure_socket, input_waits
from ..common.status import ChannelState, ListenerStatistics
from ..core.config import SessionConfig
from ..core.frames import Hello, RejectReason
from ..core.handshake import ServerHandshake, SessionRegistry, reject_reply
from ..durable.session_journal import Durable
from ..exceptions import ChannelClosed, FrameError, HandshakeRejected, ProtocolError, ReliableTCPError, UnsupportedVersion
from ._link import NO_OWNER, LinkProtocol
from ._session import Signal
from .channel import Channel

__all__ = ["Listener", "Server", "listen", "serve"]

logger = logging.getLogger(__name__)

_REJECT_LINGER = 1.0


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
        try:
            hello = self._reader.receive_data(data)
            challenge = self._reader.data_to_send()
            if challenge:
                link.write([challenge])
        except HandshakeRejected as rejected:
            self._refuse(RejectReason(rejected.reason), rejected.text)
            return
        except UnsupportedVersion as exc:
            self._refuse(RejectReason.UNSUPPORTED_VERSION, str(exc))
            return
        except (FrameError, ProtocolError) as exc:
            self._refuse(RejectReason.PROTOCOL_ERROR, str(exc))
            return
        if hello is None:
            return
        self._finish()
        if _peer_gone(link):
            logger.info("the client already left; ignored")
            link.close(abort=True)
            return
        try:
            self._listener._admit(link, hello)
        except HandshakeRejected as rejected:
            self._refuse(RejectReason(rejected.reason), rejected.text, finished=True)

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
            self._refuse(RejectReason.HANDSHAKE_TIMEOUT, "no HELLO in time")

    def _refuse(self, reason: RejectReason, text: str, *, finished: bool = False) -> None:
        """REJECT, then FIN, then (a moment later) the close."""
        if not finished:
            self._finish()
        self._listener._rejected += 1
        logger.info("handshake refused: %s (%s)", reason.name, text)
        link = self._link
        link.write([reject_reply(HandshakeRejected(reason, text))])
        transport = link.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()
            asyncio.get_running_loop().call_later(_REJECT_LINGER, functools.partial(link.close, abort=False))
        else:
            link.close(abort=False)


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
        node_id: int = 0,
        journal: str | None = None,
    ) -> None:
        if journal is not None:
            config = Durable.durable_config(config)
        self._config = config
        self._shell = shell
        self._journal_dir = journal
        self._max_pending = max_pending_handshakes
        self._registry = SessionRegistry(config, max_sessions=max_sessions, node_id=node_id)
        self._channels: dict[bytes, Channel] = {}
        self._offered: deque[Channel] = deque()
        self._changed = Signal()
        self._pending: set[LinkProtocol] = set()
        self._order = itertools.count(1)
        self._closed = False
        self._rejected = 0
        self._failed = 0
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
            if self._journal_dir is not None:
                await loop.run_in_executor(None, self._restore_prepare, self._journal_dir)
                self._restore_sessions()
        except BaseException:
            server.close()
            raise
        self._server = server
        bound = server.sockets[0].getsockname()
        self.address = (bound[0], bound[1])
        await server.start_serving()

    def _restore_prepare(self, directory: str) -> None:
        self._restorable = Durable.open_all_for_listener(directory, self._config)

    def _restore_sessions(self) -> None:
        for durable in self._restorable:
            restored = durable.restore_for_listener(self._config)
            if restored is None:
                continue
            engine, ended = restored
            channel = Channel(engine, self._shell, durable=durable, restored=True, on_end=self._session_ended)
            if ended is not None:
                channel._end_restored(f"{ended[1]} (before the restart)", engine.unacked())
            else:
                self._registry.adopt(engine)
                self._channels[engine.session_id] = channel
            self._offered.append(channel)

    def _new_connection(self) -> LinkProtocol:
        link = LinkProtocol(NO_OWNER, order=next(self._order))
        if self._closed or len(self._pending) >= self._max_pending:
            self._rejected += 1
            logger.warning("too many pending handshakes; dropped")
            link.refuse_when_made = True
            return link
        self._pending.add(link)
        link.owner = _Handshake(self, link)
        asyncio.get_running_loop().call_soon(self._configure, link)
        return link

    def _configure(self, link: LinkProtocol) -> None:
        sock = None if link.transport is None else link.transport.get_extra_info("socket")
        if sock is not None:
            configure_socket(sock, self._config)

    def _admit(self, link: LinkProtocol, hello: Hello) -> None:
        """Start or resume the session ``hello`` names; raises HandshakeRejected."""
        if self._closed:
            raise HandshakeRejected(RejectReason.SERVER_BUSY, "the server is closing")
        if hello.resume:
            channel = self._channels.get(hello.session_id)
            if channel is None:
                raise self._registry.unknown_session(hello)
            channel._open_link(link, hello=hello, new_secret=self._registry.new_secret())
            return
        engine = self._registry.start(hello, asyncio.get_running_loop().time())
        durable = None
        if self._journal_dir is not None:
            try:
                durable = Durable.open(os.path.join(self._journal_dir, engine.session_id.hex()), self._config)
            except (OSError, ReliableTCPError) as exc:
                logger.error("no journal for a new session: %s", exc)
                self._registry.forget(engine.session_id)
                raise HandshakeRejected(RejectReason.SERVER_BUSY, "the server can't journal a new session") from exc
        channel = Channel(engine, self._shell, durable=durable, on_end=self._session_ended, on_confirmed=self._offer)
        self._channels[engine.session_id] = channel
        channel._open_link(link)

    def _offer(self, channel: Channel) -> None:
        if not self._closed:
            self._offered.append(channel)
            self._changed.fire()

    def _session_ended(self, channel: Channel) -> None:
        self._failed += channel.state is ChannelState.FAILED
        session_id = bytes.fromhex(channel.session_id) if channel.session_id else b""
        self._registry.forget(session_id)
        if self._channels.get(session_id) is channel:
            del self._channels[session_id]

    async def accept(self) -> Channel:
        """The next new session (cancel to stop waiting: nothing is taken).
        Raises ChannelClosed once the listener is closed."""
        while not self._offered:
            if self._closed:
                raise ChannelClosed("the listener is closed")
            await self._changed.wait(None)
        return self._offered.popleft()

    def statistics(self) -> ListenerStatistics:
        """A frozen snapshot of the listener's counters."""
        return ListenerStatistics(
            sessions=len(self._registry),
            pending_handshakes=len(self._pending),
            rejected_handshakes=self._rejected,
            sessions_failed=self._failed,
        )

    @property
    def session_count(self) -> int:
        """Sessions currently registered."""
        return len(self._registry)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop accepting and end every session within ``timeout`` (see
        :meth:`reliable_tcp.Listener.close`)."""
        if self._closed:
            return
        self._closed = True
        self._changed.fire()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._server is not None:
            self._server.close()
        for link in list(self._pending):
            link.close(abort=True)
        channels = list(self._channels.values())
        for channel in channels:
            channel._begin_close()
        await asyncio.gather(*(channel._finish_close(deadline, reported=False) for channel in channels))
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
