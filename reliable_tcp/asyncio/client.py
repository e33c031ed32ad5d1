"""The connecting side on the event loop: ``connect()`` and the reconnect task."""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import Generator
from typing import Any, Unpack

from ..common.options import ChannelOptions, ShellOptions, resolve_options
from ..common.sockets import configure_socket
from ..core.config import SessionConfig
from ..core.engine import SessionEngine
from ..durable.session_journal import Durable
from ..exceptions import TLSHandshakeError
from ._link import NO_OWNER, LinkProtocol
from ._session import LoopSession
from .channel import Channel

__all__ = ["connect", "Connector"]


class Connector:
    """Keeps a client session connected (the asyncio twin of the threaded
    ``Connector``): whenever it has no connection, open one, after a
    backoff delay (none for the very first), until the session ends. One
    task on the session, cancelled by its teardown."""

    def __init__(self, session: LoopSession, address: tuple[str, int]) -> None:
        self._session = session
        self._address = address

    def start(self) -> None:
        """Start the loop as one of the session's tasks."""
        self._session.background(self._run())

    async def _run(self) -> None:
        session = self._session
        policy, engine = session.policy, session.engine
        shell, config = session.options, engine.config
        rng = random.Random()
        delays = shell.backoff.delays(rng)
        first = True
        proven = policy.proven_links
        while not policy.stopping:
            while policy.link is not None and not policy.stopping:
                await session.changed.wait(None)
            if policy.stopping:
                return
            if policy.proven_links != proven:
                proven = policy.proven_links
                delays = shell.backoff.delays(rng)  # only a link that proved itself restarts the backoff
            delay = 0.0 if first else next(delays)
            first = False
            if delay:
                await asyncio.sleep(delay)
            host, port = self._address
            try:
                async with asyncio.timeout(min(config.handshake_timeout, shell.connect_timeout)):
                    _, link = await session.loop.create_connection(
                        lambda: LinkProtocol(NO_OWNER),
                        host,
                        port,
                        ssl=shell.ssl_context,
                        server_hostname=(shell.server_hostname or host) if shell.ssl_context is not None else None,
                    )
            except (OSError, TimeoutError) as exc:
                self._failed(exc)
                continue
            assert link.transport is not None
            sock = link.transport.get_extra_info("socket")
            if sock is not None:
                configure_socket(sock, config)
            session.open_link(link)

    def _failed(self, exc: BaseException) -> None:
        error = exc
        if isinstance(exc, ssl.SSLError):
            error = TLSHandshakeError(f"TLS handshake failed: {exc}")
            error.__cause__ = exc  # a certificate or a version: not retried
        self._session.connect_failed(error, reason=f"can't connect to {self._address}: {exc}")


class _Connecting:
    """What :func:`connect` returns: await it, or use it with ``async with``."""

    def __init__(self, coroutine: Any) -> None:
        self._coroutine = coroutine
        self._channel: Channel | None = None

    def __await__(self) -> Generator[Any, None, Channel]:
        return self._coroutine.__await__()  # type: ignore[no-any-return]

    async def __aenter__(self) -> Channel:
        self._channel = await self._coroutine
        return self._channel

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._channel is not None
        await self._channel.close()


def connect(
    address: tuple[str, int],
    *,
    timeout: float | None = None,
    journal: str | None = None,
    config: SessionConfig | None = None,
    shell: ShellOptions | None = None,
    **options: Unpack[ChannelOptions],
) -> _Connecting:
    """Open a session with the listener at ``address`` (``await`` it, or
    ``async with`` it); the same options and promises as
    :func:`reliable_tcp.connect`."""
    return _Connecting(_connect(address, timeout=timeout, journal=journal, config=config, shell=shell, options=options))


async def _connect(
    address: tuple[str, int],
    *,
    timeout: float | None,
    journal: str | None,
    config: SessionConfig | None,
    shell: ShellOptions | None,
    options: Any,
) -> Channel:
    resolved, shell_options, _ = resolve_options(options, config, shell)
    durable = None
    engine = None
    loop = asyncio.get_running_loop()
    if journal is not None:
        resolved = Durable.durable_config(resolved)
        opening = loop.run_in_executor(None, Durable.open_for_client, journal, resolved)
        try:
            # Shielded: a cancellation must not orphan a journal the executor
            # opens anyway; it is released once the open has finished.
            durable, engine = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_release_opened)
            raise
    try:
        restored = engine is not None
        session = LoopSession(engine or SessionEngine(resolved, client=True), shell_options, durable=durable, restored=restored)
    except BaseException:
        if durable is not None:
            durable.release()  # the journal's lock must not outlive a connect that made no channel
        raise
    channel = Channel(session)
    target = (address[0], int(address[1]))
    Connector(session, target).start()
    try:
        await session.wait_first_handshake(shell_options.connect_timeout if timeout is None else timeout, target)
    except asyncio.CancelledError:
        # Cancelled (asyncio.timeout, a task cancelled): the connect raised,
        # so nothing of it may go on. The reconnect task would otherwise keep
        # dialling and hand a later listener a session nobody owns, holding
        # the journal's lock meanwhile.
        cleanup = loop.create_task(session.abandon())
        _ABANDONED.add(cleanup)
        cleanup.add_done_callback(_ABANDONED.discard)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(cleanup)  # done before the cancellation goes on (unless cancelled again)
        raise
    return channel


#: Clean-ups of cancelled connects, kept referenced until they finish.
_ABANDONED: set[asyncio.Task[None]] = set()


def _release_opened(opening: asyncio.Future[tuple[Durable, SessionEngine | None]]) -> None:
    """The journal a cancelled connect opened, released once the open is done."""
    if not opening.cancelled() and opening.exception() is None:
        opening.result()[0].release()
