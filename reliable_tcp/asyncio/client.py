"""The connecting side on the event loop: ``connect()`` and the reconnect task."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
from collections.abc import Generator
from typing import Any, Literal, Unpack

from ..common.options import ChannelOptions, ShellOptions, resolve_options
from ..common.proxies import Proxy, ProxyHandshake, choose_proxy
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

    def __init__(self, session: LoopSession, address: tuple[str, int], proxy: Proxy | None = None) -> None:
        self._session = session
        self._address = address
        self._proxy = proxy

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
            delay = policy.attempt_delay(session.loop.time(), 0.0 if first else next(delays), rng.random())
            first = False
            if delay:
                await asyncio.sleep(delay)
            host, port = self._address
            server_hostname = (shell.server_hostname or host) if shell.ssl_context is not None else None
            try:
                async with asyncio.timeout(min(config.handshake_timeout, shell.connect_timeout)):
                    if self._proxy is None:
                        _, link = await session.loop.create_connection(
                            lambda: LinkProtocol(NO_OWNER), host, port, ssl=shell.ssl_context, server_hostname=server_hostname
                        )
                    else:
                        tunnel = await self._tunnel(self._proxy)
                        _, link = await session.loop.create_connection(
                            lambda: LinkProtocol(NO_OWNER), sock=tunnel, ssl=shell.ssl_context, server_hostname=server_hostname
                        )
            except (OSError, TimeoutError) as exc:
                self._failed(exc)
                continue
            assert link.transport is not None
            sock = link.transport.get_extra_info("socket")
            if sock is not None:
                configure_socket(sock, config)
            session.open_link(link)

    async def _tunnel(self, proxy: Proxy) -> socket.socket:
        """A connection to the proxy with its tunnel to the listener open
        (each of the proxy's resolved addresses in turn)."""
        loop = self._session.loop
        error: OSError | None = None
        for family, kind, proto, _, target in await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, target)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            try:
                handshake = ProxyHandshake(proxy, *self._address)
                while True:
                    if request := handshake.data_to_send():
                        await loop.sock_sendall(sock, request)
                    if handshake.done:
                        return sock
                    handshake.receive(await loop.sock_recv(sock, handshake.bytes_wanted()))
            except BaseException:
                sock.close()
                raise
        raise error if error is not None else OSError(f"no address for {proxy.host}")

    def _failed(self, exc: BaseException) -> None:
        error = exc
        if isinstance(exc, ssl.SSLError):
            error = TLSHandshakeError(f"TLS handshake failed: {exc}")
            error.__cause__ = exc  # a certificate or a version: not retried
        route = f"{self._address} through proxy {self._proxy}" if self._proxy is not None else f"{self._address}"
        self._session.connect_failed(error, reason=f"can't connect to {route}: {exc}")


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
    proxy: str | Literal[False] | None = None,
    config: SessionConfig | None = None,
    shell: ShellOptions | None = None,
    **options: Unpack[ChannelOptions],
) -> _Connecting:
    """Open a session with the listener at ``address`` (``await`` it, or
    ``async with`` it); the same options and promises as
    :func:`reliable_tcp.connect` (``proxy`` included)."""
    target = (address[0], int(address[1]))
    route = choose_proxy(proxy, *target)
    return _Connecting(_connect(target, route, timeout=timeout, journal=journal, config=config, shell=shell, options=options))


async def _connect(
    target: tuple[str, int],
    proxy: Proxy | None,
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
    Connector(session, target, proxy).start()
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
