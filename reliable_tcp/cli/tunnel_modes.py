"""rtcat's tunnel modes: ``-L`` (local forward), ``-R`` (reverse forward),
``--exec`` (a command's stdio), and the listening end that serves them.

Each tunnelled connection is its own session, opened by the side that has
the connection's initiator (see reliable_tcp.cli.tunnel for the stream format).
Every thread here is per connection or per listening socket; a failure in
one connection resets that connection only.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from ..exceptions import ChannelClosed, ReliableTCPError
from ..sync.channel import Channel
from ..sync.client import connect
from ..sync.server import Listener, listen
from .tunnel import (
    MAGIC,
    Kind,
    PlainFraming,
    ProcessEndpoint,
    RelayResult,
    SocketEndpoint,
    TunnelError,
    TunnelRefused,
    decode_id,
    decode_request,
    encode_id,
    encode_request,
    format_address,
    parse_hostport,
    relay,
    reset_socket,
)

__all__ = ["TunnelListener", "forward_local", "forward_remote", "exec_client"]

logger = logging.getLogger(__name__)

#: How long the listening end waits for a session's request, and for the
#: client to attach a reverse connection it was told about.
REQUEST_TIMEOUT = 30.0
#: Connecting to a target on the far side.
TARGET_TIMEOUT = 10.0

Report = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _done(report: Report, name: str, result: RelayResult) -> None:
    if result.clean:
        report(f"{name}: closed, {result.sent} bytes sent, {result.received} received")
    else:
        report(f"{name}: reset ({result.reason}), {result.sent} bytes sent, {result.received} received")


def _open(server: tuple[str, int], request: bytes, options: dict[str, Any], timeout: float) -> Channel:
    """A session with the tunnel listener, its request answered: raises TunnelRefused, TunnelError, OSError."""
    channel = connect(server, timeout=timeout, **options)
    try:
        channel.send(request)
        reply = channel.recv(timeout=timeout)
        if reply == b"":
            # A plain rtcat listener whose input had ended said so first
            # (the plain stream's end message); its refusal follows.
            reply = channel.recv(timeout=timeout)
    except BaseException:
        channel.abort()
        raise
    if reply[:1] == bytes([Kind.REFUSED]):
        channel.close(timeout=5)
        raise TunnelRefused(reply[1:].decode(errors="replace"))
    if reply[:1] != bytes([Kind.OPENED]):
        channel.abort()
        raise TunnelError("the listener did not answer the tunnel request (a plain rtcat -l, without --allow, "
                          "--allow-remote or --exec, serves no tunnels)")
    return channel


# --------------------------------------------------------------- -L and --exec


def forward_local(
    bind: tuple[str, int],
    target: tuple[str, int],
    server: tuple[str, int],
    options: dict[str, Any],
    *,
    connect_timeout: float,
    report: Report = _quiet,
    ready: Callable[[tuple[str, int]], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """``rtcat -L``: every connection accepted on ``bind`` becomes a session
    to ``server``, whose listener connects it to ``target``. Runs until ``stop``."""
    stop = stop or threading.Event()
    lsock = socket.create_server(bind, backlog=512, reuse_port=False)
    lsock.settimeout(0.5)  # to notice ``stop``
    bound = lsock.getsockname()[:2]
    report(f"forwarding {format_address(bound)} to {format_address(target)} through {format_address(server)}")
    if ready is not None:
        ready(bound)
    request = encode_request(Kind.OPEN, format_address(target).encode())
    try:
        while not stop.is_set():
            try:
                conn, peer = lsock.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            name = f"{format_address(peer)} -> {format_address(target)}"
            worker = threading.Thread(
                target=_forward_one, args=(conn, name, server, request, options, connect_timeout, report),
                name=f"rtcat-forward-{peer[1]}", daemon=True,
            )
            worker.start()
    finally:
        lsock.close()


def _forward_one(
    conn: socket.socket, name: str, server: tuple[str, int], request: bytes, options: dict[str, Any],
    connect_timeout: float, report: Report,
) -> None:
    endpoint = SocketEndpoint(conn, name)
    try:
        channel = _open(server, request, options, connect_timeout)
    except TunnelRefused as exc:
        logger.warning("%s: refused by the listener: %s", name, exc.reason)
        report(f"{name}: refused: {exc.reason}")
        endpoint.abort()
        return
    except (OSError, ReliableTCPError, TimeoutError) as exc:
        logger.warning("%s: no session with %s: %s", name, format_address(server), exc)
        report(f"{name}: no session with {format_address(server)}: {exc}")
        endpoint.abort()
        return
    report(f"{name}: opened, session {channel.session_id}")
    relay(channel, endpoint, closer=True, on_done=lambda result: _done(report, name, result))


def exec_client(
    command: str,
    server: tuple[str, int],
    options: dict[str, Any],
    *,
    target: tuple[str, int] | None,
    connect_timeout: float,
    report: Report = _quiet,
) -> RelayResult:
    """``rtcat --exec``: run ``command`` with its stdio as one tunnelled
    stream, to ``target`` on the far side or (None) to the listener's own
    ``--exec`` command. Raises TunnelRefused, OSError, ReliableTCPError."""
    request = encode_request(Kind.OPEN, format_address(target).encode()) if target else encode_request(Kind.EXEC)
    channel = _open(server, request, options, connect_timeout)
    endpoint = ProcessEndpoint(command)
    report(f"{endpoint.name}: opened, session {channel.session_id}")
    return relay(channel, endpoint, closer=True, on_done=lambda result: _done(report, endpoint.name, result))


# ------------------------------------------------------------------------ -R


def forward_remote(
    remote_bind: tuple[str, int],
    target: tuple[str, int],
    server: tuple[str, int],
    options: dict[str, Any],
    *,
    connect_timeout: float,
    report: Report = _quiet,
    ready: Callable[[tuple[str, int]], None] | None = None,
) -> None:
    """``rtcat -R``: the listener at ``server`` listens on ``remote_bind``;
    each connection there is carried back here and connected to ``target``.
    A control session asks for the port and hears of each connection; each
    connection then gets a session of its own. Returns when the control
    session ends; raises TunnelRefused if the listener won't bind the port."""
    control = _open(server, encode_request(Kind.LISTEN, format_address(remote_bind).encode()), options, connect_timeout)
    bound = parse_hostport(control.recv(timeout=connect_timeout).decode())
    report(f"{format_address(server)} listens on {format_address(bound)} for {format_address(target)}")
    if ready is not None:
        ready(bound)
    try:
        while True:
            message = control.recv()
            if message[:1] != bytes([Kind.INCOMING]):
                raise TunnelError("unexpected message on the control session")
            number = decode_id(message[1:])
            threading.Thread(
                target=_reverse_one, args=(number, target, server, options, connect_timeout, report),
                name=f"rtcat-reverse-{number}", daemon=True,
            ).start()
    except ChannelClosed:
        report("the listener closed the reverse forward")
    finally:
        control.abort()


def _reverse_one(
    number: int, target: tuple[str, int], server: tuple[str, int], options: dict[str, Any], connect_timeout: float,
    report: Report,
) -> None:
    name = f"reverse #{number} -> {format_address(target)}"
    try:
        sock: socket.socket | None = socket.create_connection(target, timeout=TARGET_TIMEOUT)
        refusal = ""
    except OSError as exc:
        sock, refusal = None, f"{format_address(target)}: {exc.strerror or exc}"
    try:
        channel = _open(server, encode_request(Kind.ATTACH, encode_id(number)), options, connect_timeout)
    except (OSError, ReliableTCPError, TimeoutError) as exc:
        report(f"{name}: can't attach: {exc}")
        if sock is not None:
            reset_socket(sock)
        return
    if sock is None:
        logger.warning("%s: %s", name, refusal)
        report(f"{name}: refused: {refusal}")
        try:
            channel.send(bytes([Kind.RESET]) + refusal.encode())
            channel.close(timeout=10)
        except ReliableTCPError:
            channel.abort()
        return
    sock.settimeout(None)
    report(f"{name}: opened, session {channel.session_id}")
    relay(channel, SocketEndpoint(sock, name), closer=True, on_done=lambda result: _done(report, name, result))


# ---------------------------------------------------------- the listening end


class TunnelListener:
    """The listening end of tunnels (``rtcat -l ... --allow/--allow-remote/--exec``).

    Forwards only to the targets in ``allow``, binds reverse ports only in
    ``allow_remote``, runs ``exec_command`` for EXEC requests; anything
    else is refused with a reason both ends see."""

    def __init__(
        self,
        address: tuple[str, int],
        options: dict[str, Any],
        *,
        allow: set[tuple[str, int]],
        allow_remote: set[tuple[str, int]],
        exec_command: str | None,
        report: Report = _quiet,
    ) -> None:
        self.allow = allow
        self.allow_remote = allow_remote
        self.exec_command = exec_command
        self._report = report
        self._listener: Listener = listen(address, **options)
        self.address = self._listener.address
        self._pending: dict[int, socket.socket] = {}
        self._pending_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed = threading.Event()

    def serve_forever(self) -> None:
        """Accept sessions until :meth:`close`; each runs in a thread of its own."""
        while not self._closed.is_set():
            try:
                channel = self._listener.accept(timeout=0.5)
            except TimeoutError:
                continue
            except ChannelClosed:
                return
            threading.Thread(target=self._session, args=(channel,), name="rtcat-tunnel-session", daemon=True).start()

    def close(self) -> None:
        """Stop accepting and end every session."""
        self._closed.set()
        self._listener.close()
        with self._pending_lock:
            pending, self._pending = list(self._pending.values()), {}
        for sock in pending:
            reset_socket(sock)

    def _refuse(self, channel: Channel, reason: str) -> None:
        logger.warning("tunnel request refused: %s", reason)
        self._report(f"refused: {reason}")
        try:
            channel.send(bytes([Kind.REFUSED]) + reason.encode()[:1000])
            channel.recv(timeout=10)  # the client closes once it has read the refusal
        except ChannelClosed:
            pass
        except (ReliableTCPError, TimeoutError):
            channel.abort()
            return
        try:
            channel.close(timeout=5)
        except ReliableTCPError:
            pass

    def _session(self, channel: Channel) -> None:
        try:
            first = channel.recv(timeout=REQUEST_TIMEOUT)
        except (ReliableTCPError, TimeoutError) as exc:
            logger.warning("a session sent no tunnel request: %s", exc)
            channel.abort()
            return
        if not first.startswith(MAGIC):
            self._plain(channel, first)
            return
        try:
            kind, body = decode_request(first)
        except TunnelError as exc:
            self._refuse(channel, str(exc))
            return
        try:
            if kind is Kind.OPEN:
                self._open_target(channel, body)
            elif kind is Kind.EXEC:
                self._run_command(channel)
            elif kind is Kind.LISTEN:
                self._reverse_control(channel, body)
            else:
                self._attach(channel, body)
        except (TunnelError, ValueError) as exc:
            self._refuse(channel, str(exc))

    def _plain(self, channel: Channel, first: bytes) -> None:
        """A plain rtcat (or any program sending bytes) reached this
        listener: with --exec, its stream is the command's stdin and
        stdout, as ``ncat -l --sh-exec`` does. Otherwise there is nothing
        to carry it to; a refusal sent in-band would reach the client's
        stdout as data, so the session is aborted (the client exits
        non-zero) and the reason is said here."""
        if self.exec_command is None:
            logger.warning("a plain session (not a tunnel request) arrived; this listener runs no --exec command: "
                           "aborted")
            self._report("refused a plain session: this listener runs no --exec command")
            channel.abort()
            return
        try:
            endpoint = ProcessEndpoint(self.exec_command)
        except OSError as exc:
            logger.warning("can't run %r: %s", self.exec_command, exc)
            channel.abort()
            return
        self._report(f"{endpoint.name}: opened for a plain session {channel.session_id}")
        relay(channel, endpoint, closer=False, framing=PlainFraming(), first=first,
              on_done=lambda result: _done(self._report, endpoint.name, result))

    def _open_target(self, channel: Channel, body: bytes) -> None:
        target = parse_hostport(body.decode(errors="replace"))
        if target not in self.allow:
            allowed = ", ".join(sorted(format_address(a) for a in self.allow)) or "none"
            self._refuse(channel, f"{format_address(target)} is not allowed here (allowed: {allowed})")
            return
        try:
            sock = socket.create_connection(target, timeout=TARGET_TIMEOUT)
        except OSError as exc:
            self._refuse(channel, f"{format_address(target)}: {exc.strerror or exc}")
            return
        sock.settimeout(None)
        name = f"session {channel.session_id} -> {format_address(target)}"
        self._start(channel, SocketEndpoint(sock, name))

    def _run_command(self, channel: Channel) -> None:
        if self.exec_command is None:
            self._refuse(channel, "this listener runs no command (--exec)")
            return
        try:
            endpoint = ProcessEndpoint(self.exec_command)
        except OSError as exc:
            self._refuse(channel, f"can't run {self.exec_command!r}: {exc}")
            return
        self._start(channel, endpoint)

    def _start(self, channel: Channel, endpoint: SocketEndpoint | ProcessEndpoint) -> None:
        try:
            channel.send(bytes([Kind.OPENED]))
        except ReliableTCPError:
            endpoint.abort()
            channel.abort()
            return
        self._report(f"{endpoint.name}: opened")
        relay(channel, endpoint, closer=False, on_done=lambda result: _done(self._report, endpoint.name, result))

    def _reverse_control(self, channel: Channel, body: bytes) -> None:
        bind_text = body.decode(errors="replace")
        host, _, port = bind_text.rpartition(":")
        wanted = (host or "127.0.0.1", int(port))
        if wanted not in self.allow_remote:
            allowed = ", ".join(sorted(format_address(a) for a in self.allow_remote)) or "none"
            self._refuse(channel, f"reverse port {format_address(wanted)} is not allowed here (allowed: {allowed})")
            return
        try:
            lsock = socket.create_server(wanted, backlog=512)
        except OSError as exc:
            self._refuse(channel, f"can't listen on {format_address(wanted)}: {exc.strerror or exc}")
            return
        bound = lsock.getsockname()[:2]
        channel.send(bytes([Kind.OPENED]))
        channel.send(format_address(bound).encode())
        self._report(f"reverse forward: listening on {format_address(bound)}")
        acceptor = threading.Thread(target=self._reverse_accept, args=(lsock, channel), name="rtcat-reverse-accept",
                                    daemon=True)
        acceptor.start()
        try:
            while True:
                channel.recv()  # the client sends nothing more; this waits for its end
        except ReliableTCPError:
            pass
        finally:
            lsock.shutdown(socket.SHUT_RDWR) if _is_listening(lsock) else None
            lsock.close()
            acceptor.join(5)
            try:
                channel.close(timeout=5)
            except ReliableTCPError:
                pass
            self._report(f"reverse forward on {format_address(bound)} ended")

    def _reverse_accept(self, lsock: socket.socket, control: Channel) -> None:
        while True:
            try:
                conn, peer = lsock.accept()
            except OSError:
                return
            number = next(self._ids)
            with self._pending_lock:
                self._pending[number] = conn
            timer = threading.Timer(REQUEST_TIMEOUT, self._expire, args=(number,))
            timer.daemon = True
            timer.start()
            try:
                control.send(bytes([Kind.INCOMING]) + encode_id(number))
            except ReliableTCPError:
                self._expire(number)
                return
            self._report(f"reverse #{number}: connection from {format_address(peer)}")

    def _expire(self, number: int) -> None:
        with self._pending_lock:
            sock = self._pending.pop(number, None)
        if sock is not None:
            logger.warning("reverse #%d: never attached; reset", number)
            reset_socket(sock)

    def _attach(self, channel: Channel, body: bytes) -> None:
        number = decode_id(body)
        with self._pending_lock:
            sock = self._pending.pop(number, None)
        if sock is None:
            self._refuse(channel, f"no reverse connection #{number} is waiting")
            return
        self._start(channel, SocketEndpoint(sock, f"reverse #{number}"))


def _is_listening(sock: socket.socket) -> bool:
    return sock.fileno() != -1
