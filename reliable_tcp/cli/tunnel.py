"""Tunnels: a TCP connection (or a command's stdio) carried by a reliable session.

This is what ``rtcat -L``, ``-R`` and ``--exec`` are built on. One tunnelled
connection is one session. Its first message is a request naming what the
far end connects the stream to; every later message is one frame of the
stream, its first byte saying which (docs/protocol.md, "Tunnels"):

- ``DATA`` + bytes, in order, exactly once;
- ``EOF``: the sender's side stopped sending (the far end then half-closes
  its own connection with ``shutdown(SHUT_WR)``);
- ``RESET`` + reason: the sender's connection was refused or reset (the far
  end resets its own: a program never mistakes a truncated stream for a
  complete one).

The session ends cleanly once both directions have sent ``EOF`` and
everything is acknowledged: the side that opened it closes it. A session
that is lost, or ends before both ``EOF``, resets both ends' connections.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..exceptions import ChannelClosed, ReliableTCPError, SessionLost
from ..sync.channel import Channel

__all__ = [
    "MAGIC",
    "Kind",
    "TunnelError",
    "TunnelRefused",
    "Endpoint",
    "SocketEndpoint",
    "ProcessEndpoint",
    "RelayResult",
    "encode_request",
    "decode_request",
    "format_address",
    "parse_forward",
    "relay",
    "reset_socket",
]

logger = logging.getLogger(__name__)

#: Every tunnel request starts with these bytes, so a tunnel listener can
#: tell a tunnel from a plain rtcat session (and refuse the latter clearly).
MAGIC = b"RTCAT-TUNNEL/1 "
#: How much one read from a connection or a command takes (one DATA message at most).
CHUNK = 64 * 1024
_ID = struct.Struct(">Q")


class Kind(enum.IntEnum):
    """The first byte of a tunnel message."""

    DATA = 0
    EOF = 1
    RESET = 2
    # Requests (the session's first message, after MAGIC), client to listener.
    OPEN = 16  # connect to "HOST:PORT"
    EXEC = 17  # connect to the listener's --exec command
    LISTEN = 18  # bind "BIND:PORT" and announce each connection there (-R's control session)
    ATTACH = 19  # carry the announced connection whose id (u64) follows
    # Replies, listener to client.
    OPENED = 32
    REFUSED = 33  # + reason (UTF-8)
    INCOMING = 34  # + id (u64): a connection arrived on the reverse port


class TunnelError(ReliableTCPError):
    """A tunnel message that breaks the tunnel protocol."""


class TunnelRefused(ReliableTCPError):
    """The far end refused the tunnel request (``reason`` says why)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def encode_request(kind: Kind, body: bytes = b"") -> bytes:
    """The first message of a tunnel session."""
    return MAGIC + bytes([kind]) + body


def decode_request(message: bytes) -> tuple[Kind, bytes]:
    """Split a request into its kind and body; raises TunnelError."""
    if not message.startswith(MAGIC) or len(message) <= len(MAGIC):
        raise TunnelError("not a tunnel request (is the other side a plain rtcat?)")
    try:
        kind = Kind(message[len(MAGIC)])
    except ValueError:
        raise TunnelError(f"unknown tunnel request {message[len(MAGIC)]}") from None
    if kind not in (Kind.OPEN, Kind.EXEC, Kind.LISTEN, Kind.ATTACH):
        raise TunnelError(f"{kind.name} is not a request")
    return kind, message[len(MAGIC) + 1 :]


def encode_id(number: int) -> bytes:
    return _ID.pack(number)


def decode_id(body: bytes) -> int:
    if len(body) != _ID.size:
        raise TunnelError("a connection id is 8 bytes")
    return int(_ID.unpack(body)[0])


def format_address(address: tuple[str, int]) -> str:
    """``host:port``, with an IPv6 host in brackets (``[::]:7000``)."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) into a pair; raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    number = int(port)
    if not 0 < number <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return host, number


def parse_forward(spec: str) -> tuple[tuple[str, int], tuple[str, int]]:
    """``[BIND:]PORT:HOST:HPORT`` (as ``ssh -L``) into ((bind, port), (host, hport))."""
    parts = spec.split(":")
    if len(parts) == 3:
        parts = ["127.0.0.1", *parts]
    if len(parts) != 4:
        raise ValueError(f"expected [BIND:]PORT:HOST:HPORT, got {spec!r}")
    bind, port, host, hport = parts
    return (bind, _port(port, spec, allow_zero=True)), (host, _port(hport, spec))


def parse_bind(spec: str) -> tuple[str, int]:
    """``[BIND:]PORT`` into (bind, port); the bind address defaults to 127.0.0.1."""
    bind, _, port = spec.rpartition(":")
    return (bind or "127.0.0.1"), _port(port, spec, allow_zero=True)


def _port(text: str, spec: str, *, allow_zero: bool = False) -> int:
    try:
        number = int(text)
    except ValueError:
        raise ValueError(f"not a port number in {spec!r}: {text!r}") from None
    if not (0 if allow_zero else 1) <= number <= 65535:
        raise ValueError(f"port out of range in {spec!r}: {number}")
    return number


def reset_socket(sock: socket.socket) -> None:
    """End ``sock`` with RST, never FIN, waking a thread blocked reading it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)  # wakes a blocked recv without sending anything
    except OSError:
        pass
    sock.close()


class Endpoint(Protocol):
    """One end of a tunnelled stream: a TCP connection or a command."""

    name: str

    def read(self) -> bytes:
        """Up to CHUNK bytes; b"" once the sender finished (or after abort). Raises OSError on a reset."""

    def write(self, data: bytes) -> None:
        """All of ``data``; raises OSError if the other party is gone."""

    def end_writing(self) -> None:
        """Half-close: no more bytes will be written."""

    def abort(self) -> None:
        """End at once, loudly (RST for a connection, SIGTERM for a command)."""

    def close(self) -> None:
        """End normally, once both directions are done."""


class SocketEndpoint:
    """A TCP connection as a tunnel endpoint."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.aborted = False
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def read(self) -> bytes:
        data = self.sock.recv(CHUNK)
        return b"" if self.aborted else data

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def end_writing(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def abort(self) -> None:
        if not self.aborted:
            self.aborted = True
            reset_socket(self.sock)

    def close(self) -> None:
        if not self.aborted:
            self.sock.close()


class ProcessEndpoint:
    """A command run through /bin/sh, its stdin and stdout the stream (stderr is ours)."""

    def __init__(self, command: str) -> None:
        self.name = f"exec {command!r}"
        self.aborted = False
        self.input_closed = False
        self.proc = subprocess.Popen(
            command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, start_new_session=True
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin = self.proc.stdin
        self._stdout = self.proc.stdout

    def read(self) -> bytes:
        data = os.read(self._stdout.fileno(), CHUNK)
        return b"" if self.aborted else data

    def write(self, data: bytes) -> None:
        if self.input_closed:
            return
        try:
            self._stdin.write(data)
        except BrokenPipeError:
            # The command closed its stdin (or exited): it chose not to read
            # the rest, as a program may; what it wrote still flows back.
            self.input_closed = True
            logger.info("%s stopped reading its input; the rest is discarded", self.name)

    def end_writing(self) -> None:
        try:
            self._stdin.close()
        except OSError:
            pass

    def abort(self) -> None:
        if self.aborted:
            return
        self.aborted = True
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its whole group: the shell and what it started
        except ProcessLookupError:
            pass
        self.end_writing()
        self._reap()

    def close(self) -> None:
        self.end_writing()
        self._reap()

    def _reap(self) -> None:
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._stdout.close()


@dataclass
class RelayResult:
    """How one tunnelled stream went."""

    sent: int = 0  # bytes from the endpoint into the session
    received: int = 0  # bytes from the session out to the endpoint
    clean: bool = False  # both directions ended with EOF and the session closed cleanly
    reason: str = ""  # why not, when not clean


class _Relay:
    """Both directions of one tunnelled stream, one thread each.

    The inbound side keeps reading the session after the far end's EOF, so
    that a session lost while this end's program is idle still resets it.
    Whichever direction finishes second on the opening side closes the
    session; that close (or the far end's) ends the inbound wait."""

    def __init__(self, channel: Channel, endpoint: Endpoint, closer: bool) -> None:
        self.channel = channel
        self.endpoint = endpoint
        self.closer = closer
        self.result = RelayResult()
        self._lock = threading.Lock()
        self._eof_sent = False
        self._eof_received = False
        self._closing = False
        self._failed = False

    def _fail(self, reason: str, *, tell_peer: bool) -> None:
        """Reset the endpoint and, if the failure is ours, tell the far end to reset its own."""
        with self._lock:
            if self._failed:
                return
            self._failed = True
            self.result.reason = reason
        if tell_peer:
            try:
                self.channel.send(bytes([Kind.RESET]) + reason.encode()[:1000], timeout=5)
            except (ReliableTCPError, TimeoutError):
                pass
        self.endpoint.abort()
        if tell_peer:
            try:
                self.channel.close(timeout=10)  # the RESET leaves before the session ends
            except ReliableTCPError:
                pass

    def _one_direction_done(self, *, sent: bool) -> None:
        """Record an EOF; on the opening side, the second one closes the session."""
        with self._lock:
            if sent:
                self._eof_sent = True
            else:
                self._eof_received = True
            close = self.closer and self._eof_sent and self._eof_received and not self._closing and not self._failed
            self._closing = self._closing or close
        if close:
            try:
                self.channel.close(timeout=60)
            except (ReliableTCPError, TimeoutError) as exc:
                self._fail(f"the session did not end cleanly: {exc}", tell_peer=False)

    def outbound(self) -> None:
        """Endpoint to session."""
        channel, endpoint = self.channel, self.endpoint
        try:
            while True:
                data = endpoint.read()
                if not data:
                    if not self._failed and not getattr(endpoint, "aborted", False):
                        channel.send(bytes([Kind.EOF]))
                        self._one_direction_done(sent=True)
                    return
                channel.send(bytes([Kind.DATA]) + data)
                self.result.sent += len(data)
        except OSError as exc:
            if not self._failed:
                self._fail(f"{endpoint.name}: {exc.strerror or exc}", tell_peer=True)
        except ReliableTCPError as exc:
            self._fail(f"session ended: {exc}", tell_peer=False)

    def inbound(self) -> None:
        """Session to endpoint, until the session ends (cleanly once both EOFs passed)."""
        channel, endpoint = self.channel, self.endpoint
        try:
            while True:
                message = channel.recv()
                kind = message[0] if message else -1
                if kind == Kind.DATA and not self._eof_received:
                    try:
                        endpoint.write(message[1:])
                    except OSError as exc:
                        self._fail(f"{endpoint.name}: {exc.strerror or exc}", tell_peer=True)
                        return
                    self.result.received += len(message) - 1
                elif kind == Kind.EOF and not self._eof_received:
                    endpoint.end_writing()
                    self._one_direction_done(sent=False)
                elif kind == Kind.RESET:
                    self._fail(f"the far end was reset: {message[1:].decode(errors='replace')}", tell_peer=False)
                    return
                else:
                    self._fail(f"tunnel protocol: unexpected message kind {kind}", tell_peer=True)
                    return
        except SessionLost as exc:
            self._fail(f"session lost: {exc}", tell_peer=False)
        except ChannelClosed:
            if not (self._eof_sent and self._eof_received):
                self._fail("the far end closed before its stream ended", tell_peer=False)
        except ReliableTCPError as exc:
            self._fail(f"session failed: {exc}", tell_peer=False)

    def finish(self) -> None:
        """After both threads: close what is left."""
        try:
            self.channel.close(timeout=10)  # done already on a clean end; a lost session says so
        except (ReliableTCPError, TimeoutError) as exc:
            if not self._failed:
                self.result.reason = f"the session did not end cleanly: {exc}"
                self._failed = True
        if not self._failed:
            self.result.clean = True
            self.endpoint.close()
        else:
            self.endpoint.abort()


def relay(channel: Channel, endpoint: Endpoint, *, closer: bool, on_done: Callable[[RelayResult], None] | None = None) -> RelayResult:
    """Carry ``endpoint``'s stream over ``channel`` both ways until both
    directions ended (then the session closes cleanly) or something failed
    (then both ends' endpoints are reset). ``closer``: this side opened the
    session and closes it. Blocks; runs the outbound direction in a thread."""
    state = _Relay(channel, endpoint, closer)
    outbound = threading.Thread(target=state.outbound, name=f"rtcat-tunnel-out-{endpoint.name}", daemon=True)
    outbound.start()
    state.inbound()
    outbound.join()
    state.finish()
    if state._failed:
        logger.warning("%s: reset: %s", endpoint.name, state.result.reason)
    if on_done is not None:
        on_done(state.result)
    return state.result
