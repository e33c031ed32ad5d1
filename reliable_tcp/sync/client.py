"""The connecting side: ``connect()`` and the reconnect loop behind it."""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from typing import Unpack

from ..common.ending import first_handshake_error
from ..common.options import ChannelOptions, ShellOptions, resolve_options
from ..common.sockets import close_socket, configure_socket
from ..core.config import SessionConfig
from ..core.engine import SessionEngine
from ..durable.session_journal import Durable
from ..exceptions import TLSHandshakeError
from ._deadline import Deadline
from ._session import Connecting
from .channel import Channel
from .tls import TLSLayer

__all__ = ["connect", "Connector"]

logger = logging.getLogger(__name__)

#: connect() that failed: how long the threads may take to stop.
_FINAL_FLUSH = 2.0


class Connector:
    """Keeps a client channel connected: whenever it has no connection, open
    one (after a backoff delay, none for the very first), until the channel
    ends. Every attempt can be interrupted at once by :meth:`stop`, so
    ``close()`` and ``connect(timeout=...)`` never wait for a SYN that goes
    unanswered."""

    def __init__(
        self, channel: ClientChannel, address: tuple[str, int], config: SessionConfig, shell: ShellOptions, name: str
    ) -> None:
        self._channel = channel
        self._address = address
        self._config = config
        self._shell = shell
        self._stopped = threading.Event()
        self._dialing_lock = threading.Lock()
        self._dialing: socket.socket | None = None  # the socket of the attempt under way
        self._rng = random.Random()
        self._thread = threading.Thread(target=self._run, name=f"{name}-connector", daemon=True)

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
        delays = self._shell.backoff.delays(self._rng)
        first = True
        connections = self._channel.statistics().connections
        while self._channel._wait_disconnected() and not self._stopped.is_set():
            now_connections = self._channel.statistics().connections
            if now_connections != connections:
                connections = now_connections
                delays = self._shell.backoff.delays(self._rng)  # a working link resets the backoff
            delay = 0.0 if first else next(delays)
            first = False
            if self._stopped.wait(delay):
                return
            self._attempt()

    def _attempt(self) -> None:
        timeout = min(self._config.handshake_timeout, self._shell.connect_timeout)
        try:
            sock = self._dial(timeout)
            tls = self._secure(sock, timeout) if self._shell.ssl_context is not None else None
        except OSError as exc:
            self._forget_dialing()
            if self._stopped.is_set():
                return
            logger.debug("connect to %s failed: %s", self._address, exc)
            self._channel._connect_failed(exc, reason=f"can't connect to {self._address}: {exc}")
            return
        sock.settimeout(None)
        configure_socket(sock, self._config)
        self._forget_dialing()
        if self._stopped.is_set():
            close_socket(sock, abort=True)
            return
        self._channel._open_link(sock, tls)

    def _dial(self, timeout: float) -> socket.socket:
        """A TCP connection to the address (each of its resolved addresses in turn)."""
        host, port = self._address
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

    def _secure(self, sock: socket.socket, timeout: float) -> TLSLayer:
        assert self._shell.ssl_context is not None
        tls = TLSLayer(self._shell.ssl_context, server_side=False, server_hostname=self._shell.server_hostname or self._address[0])
        try:
            tls.handshake(sock, timeout)
        except TLSHandshakeError:
            close_socket(sock, abort=True)
            raise
        return tls

    def _forget_dialing(self) -> None:
        with self._dialing_lock:
            self._dialing = None


class ClientChannel(Channel):
    """A channel on the connecting side: the door its reconnect loop uses."""

    def _wait_disconnected(self) -> bool:
        """Connector: block until the channel needs a new connection; False
        once it never will."""
        with self._lock:
            self._changed.wait_for(lambda: self._session.link is None or self._session.stopping)
            return not self._session.stopping

    def _connect_failed(self, error: BaseException, *, reason: str) -> None:
        """Connector: an attempt failed; one not worth retrying ends the channel."""
        with self._locked:
            self._carry_out(self._session.connect_failed(time.monotonic(), error, reason))

    def _set_connector(self, connector: Connecting) -> None:
        self._connector = connector

    def _wait_first_handshake(self, deadline: Deadline, address: object) -> None:
        """connect(): return once the first handshake is done, or raise why not."""
        session = self._session
        with self._lock:
            deadline.wait(self._changed, lambda: session.ever_connected or session.ended)
            if session.ever_connected:
                return
            error = first_handshake_error(session.ending, restored=self.restored, address=address, last_cause=session.last_cause)
        self._teardown(Deadline(_FINAL_FLUSH), linger=False)
        raise error


def connect(
    address: tuple[str, int],
    *,
    timeout: float | None = None,
    journal: str | None = None,
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
    """
    resolved, shell_options, _ = resolve_options(options, config, shell)
    deadline = Deadline(shell_options.connect_timeout if timeout is None else timeout)
    durable = None
    engine = None
    if journal is not None:
        resolved = Durable.durable_config(resolved)
        durable, engine = Durable.open_for_client(journal, resolved)
    try:
        channel = ClientChannel(
            engine or SessionEngine(resolved, client=True), shell_options, durable=durable, restored=engine is not None
        )
    except BaseException:
        if durable is not None:
            durable.release()
        raise
    target = (address[0], int(address[1]))
    connector = Connector(channel, target, resolved, shell_options, channel.name)
    channel._set_connector(connector)
    connector.start()
    channel._wait_first_handshake(deadline, target)
    return channel
