"""The connecting side: ``connect()`` and the reconnect loop behind it."""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from typing import Literal, Unpack

from ..common.options import ChannelOptions, ShellOptions, resolve_options
from ..common.proxies import Proxy, ProxyHandshake, choose_proxy
from ..common.sockets import close_socket, configure_socket
from ..core.config import SessionConfig
from ..core.engine import SessionEngine
from ..durable.session_journal import Durable
from ..exceptions import TLSHandshakeError
from ._deadline import Deadline
from ._session import SessionShell
from .channel import Channel
from .tls import TLSLayer

__all__ = ["connect", "Connector"]

logger = logging.getLogger(__name__)


class Connector:
    """Keeps a client channel connected: whenever it has no connection, open
    one (after a backoff delay, none for the very first), until the channel
    ends. Every attempt can be interrupted at once by :meth:`stop`, so
    ``close()`` and ``connect(timeout=...)`` never wait for a SYN that goes
    unanswered."""

    def __init__(
        self,
        session: SessionShell,
        address: tuple[str, int],
        config: SessionConfig,
        shell: ShellOptions,
        proxy: Proxy | None = None,
    ) -> None:
        self._session = session
        self._address = address
        self._proxy = proxy
        self._config = config
        self.options = shell
        self._stopped = threading.Event()
        self._dialing_lock = threading.Lock()
        self._dialing: socket.socket | None = None  # the socket of the attempt under way
        self._rng = random.Random()
        self._thread = threading.Thread(target=self._run, name=f"{session.name}-connector", daemon=True)

    def start(self) -> None:
        """Start the loop."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop, interrupting an attempt under way (shutdown wakes a
        blocked connect() on Linux)."""
        self._stopped.set()
        with self._dialing_lock:
            sock = self._dialing
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def join(self, deadline: Deadline) -> bool:
        """Wait for the loop's thread; whether it ended."""
        return deadline.join(self._thread)

    def _run(self) -> None:
        delays = self.options.backoff.delays(self._rng)
        first = True
        proven = self._proven_links()
        while self._session.wait_disconnected() and not self._stopped.is_set():
            if (now_proven := self._proven_links()) != proven:
                proven = now_proven
                delays = self.options.backoff.delays(self._rng)  # only a link that proved itself restarts the backoff
            delay = 0.0 if first else next(delays)
            first = False
            with self._session.lock:
                delay = self._session.policy.attempt_delay(time.monotonic(), delay, self._rng.random())
            if self._stopped.wait(delay):
                return
            self._attempt()

    def _proven_links(self) -> int:
        with self._session.lock:
            return self._session.policy.proven_links

    def _attempt(self) -> None:
        timeout = min(self._config.handshake_timeout, self.options.connect_timeout)
        try:
            if self._proxy is None:
                sock = self._dial(self._address, timeout)
            else:
                sock = self._dial((self._proxy.host, self._proxy.port), timeout)
                self._tunnel(sock, self._proxy, Deadline(timeout))
            tls = self._secure(sock, timeout) if self.options.ssl_context is not None else None
        except OSError as exc:
            self._forget_dialing()
            if self._stopped.is_set():
                return
            route = f"{self._address} through proxy {self._proxy}" if self._proxy is not None else f"{self._address}"
            logger.debug("connect to %s failed: %s", route, exc)
            self._session.connect_failed(exc, reason=f"can't connect to {route}: {exc}")
            return
        sock.settimeout(None)
        configure_socket(sock, self._config)
        self._forget_dialing()
        if self._stopped.is_set():
            close_socket(sock, abort=True)
            return
        self._session.open_link(sock, tls)

    def _dial(self, address: tuple[str, int], timeout: float) -> socket.socket:
        """A TCP connection to ``address`` (each of its resolved addresses in turn)."""
        host, port = address
        error: OSError | None = None
        for family, kind, proto, _, target in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            with self._dialing_lock:
                self._dialing = sock
            if self._stopped.is_set():
                sock.close()
                raise ConnectionAbortedError("stopped")
            try:
                sock.settimeout(timeout)
                sock.connect(target)
                return sock
            except OSError as exc:
                error = exc
                self._forget_dialing()
                sock.close()
        raise error if error is not None else OSError(f"no address for {host}")

    def _tunnel(self, sock: socket.socket, proxy: Proxy, deadline: Deadline) -> None:
        """Open the proxy's tunnel to the listener on ``sock`` (the proxy's
        connection); ``stop()`` interrupts it like the dial."""
        handshake = ProxyHandshake(proxy, *self._address)
        try:
            while True:
                remaining = deadline.remaining()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"proxy {proxy} did not answer in time")
                sock.settimeout(remaining)
                if request := handshake.data_to_send():
                    sock.sendall(request)
                if handshake.done:
                    return
                handshake.receive(sock.recv(handshake.bytes_wanted()))
        except BaseException:
            close_socket(sock, abort=True)
            raise

    def _secure(self, sock: socket.socket, timeout: float) -> TLSLayer:
        assert self.options.ssl_context is not None
        tls = TLSLayer(self.options.ssl_context, server_side=False, server_hostname=self.options.server_hostname or self._address[0])
        try:
            tls.handshake(sock, timeout)
        except TLSHandshakeError:
            close_socket(sock, abort=True)
            raise
        return tls

    def _forget_dialing(self) -> None:
        with self._dialing_lock:
            self._dialing = None


def connect(
    address: tuple[str, int],
    *,
    timeout: float | None = None,
    journal: str | None = None,
    proxy: str | Literal[False] | None = None,
    config: SessionConfig | None = None,
    shell: ShellOptions | None = None,
    **options: Unpack[ChannelOptions],
) -> Channel:
    """Open a session with the listener at ``address``; return once the
    first handshake is done.

    Until then every failure (refused, unreachable, busy, no answer) is
    retried with backoff; after ``timeout`` (default: the
    ``connect_timeout`` option, 30 s) it raises TimeoutError chained to the
    last failure. A refusal that can't get better (wrong key, another
    protocol version) raises at once. Keyword options are those of
    :class:`~reliable_tcp.core.config.SessionConfig` and
    :class:`~reliable_tcp.common.options.ShellOptions` (typed by
    :class:`~reliable_tcp.common.options.ChannelOptions`), applied over ``config``
    and ``shell``. With ``journal`` (a directory) the session survives a
    restart of this process: see docs/durability.md.

    ``proxy`` reaches the listener through a proxy, on every reconnect too:
    ``"http://[user:pass@]host:port"`` (HTTP CONNECT) or
    ``"socks5://[user:pass@]host:port"``. ``None`` (the default) takes the
    proxy from the environment (``https_proxy``, ``all_proxy``,
    ``no_proxy``), ``False`` always dials directly. A refusal raises
    :class:`~reliable_tcp.exceptions.ProxyError` (docs/guide.md, "Through a
    proxy").
    """
    target = (address[0], int(address[1]))
    route = choose_proxy(proxy, *target)
    resolved, shell_options, _ = resolve_options(options, config, shell)
    deadline = Deadline(shell_options.connect_timeout if timeout is None else timeout)
    durable = None
    engine = None
    if journal is not None:
        resolved = Durable.durable_config(resolved)
        durable, engine = Durable.open_for_client(journal, resolved)
    try:
        restored = engine is not None
        session = SessionShell(engine or SessionEngine(resolved, client=True), shell_options, durable=durable, restored=restored)
    except BaseException:
        if durable is not None:
            durable.release()
        raise
    channel = Channel(session)
    session.connector = connector = Connector(session, target, resolved, shell_options, route)
    connector.start()
    session.wait_first_handshake(deadline, target)
    return channel
