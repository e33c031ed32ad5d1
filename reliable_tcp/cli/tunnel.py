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

from ..core.frames import RejectReason
from ..exceptions import ChannelClosed, RejectedByPeer, ReliableTCPError, SessionHandedOver, SessionLost
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
#: Plain framing: how long what was sent before a failure may take to be
#: acknowledged before the session is aborted.
FLUSH_BEFORE_ABORT = 5.0
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
    """One end of a carried stream: a TCP connection, a command, or rtcat's stdio."""

    name: str
    #: A person typing (a terminal): when the far side's stream ends, this
    #: side ends its own instead of waiting for the person to type Ctrl-D.
    interactive: bool

    def read(self, limit: int) -> bytes:
        """Up to ``limit`` bytes; b"" once the input ended (or reading was
        stopped). Raises OSError on a reset or a read error."""

    def write(self, data: bytes) -> None:
        """All of ``data``; raises OSError if the other party is gone."""

    def end_writing(self) -> None:
        """Half-close: no more bytes will be written."""

    def stop_reading(self) -> bool:
        """Make :meth:`read` return b"" (waking it if it waits); True if
        input was left unsent (more to read, or read but not sent)."""

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
        self.interactive = False
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def read(self, limit: int) -> bytes:
        data = self.sock.recv(min(CHUNK, limit))
        return b"" if self.aborted else data

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def end_writing(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def stop_reading(self) -> bool:
        self.abort()  # a connection's stream can't be cut short quietly: its program gets a reset
        return True

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
        self.interactive = False
        self.input_closed = False
        self.proc = subprocess.Popen(
            command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, start_new_session=True
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin = self.proc.stdin
        self._stdout = self.proc.stdout

    def read(self, limit: int) -> bytes:
        data = os.read(self._stdout.fileno(), min(CHUNK, limit))
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

    def stop_reading(self) -> bool:
        self.abort()  # what the command still had to say can't be sent
        return True

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


class Framing(Protocol):
    """How a carried stream becomes messages, and back."""

    #: The message that ends the sender's direction (its half-close).
    end: bytes
    #: Bytes each DATA message adds to the stream's own.
    overhead: int
    #: The peer's clean close also ends its direction (plain rtcat, where
    #: the peer may be any program; tunnels always send their end first).
    close_ends_stream: bool

    def pack(self, data: bytes, limit: int) -> list[bytes]:
        """The messages that carry ``data`` (``limit``: the largest message)."""

    def flush(self) -> list[bytes]:
        """At the end of the input: the messages still held back."""

    def unpack(self, message: bytes) -> tuple[int, bytes]:
        """``(kind, body)``: a :class:`Kind`, or -1 for a message that is none."""

    def reset(self, reason: str) -> bytes | None:
        """The message that tells the far end to reset, or None if the
        framing has none (the session is then aborted instead)."""


class TunnelFraming:
    """Tunnels (``-L``, ``-R``, ``--exec``): a kind byte, then the body."""

    end = bytes([Kind.EOF])
    overhead = 1
    close_ends_stream = False

    def pack(self, data: bytes, limit: int) -> list[bytes]:
        return [bytes([Kind.DATA]) + data]

    def flush(self) -> list[bytes]:
        return []

    def unpack(self, message: bytes) -> tuple[int, bytes]:
        return (message[0] if message else -1), message[1:]

    def reset(self, reason: str) -> bytes | None:
        return bytes([Kind.RESET]) + reason.encode()[:1000]


class LineTooLong(ValueError):
    """A line longer than the largest message the session takes."""


class PlainFraming:
    """Plain rtcat (docs/cli.md): each message is a piece of the stream, or
    with ``lines`` one line without its newline. The empty message ends the
    sender's direction; in line mode, where the empty message is an empty
    line, a message holding a lone newline does (no line holds one). The
    peer's clean close ends its direction too, so any program that sends
    messages and closes is a valid peer."""

    overhead = 0
    close_ends_stream = True

    def __init__(self, *, lines: bool = False) -> None:
        self.lines = lines
        self.end = b"\n" if lines else b""
        self._partial = b""  # line mode: the line read so far, its newline not yet

    def pack(self, data: bytes, limit: int) -> list[bytes]:
        if not self.lines:
            return [data]
        parts = (self._partial + data).split(b"\n")
        self._partial = parts.pop()
        if len(self._partial) > limit:  # bounded memory: a line that can't be sent is not gathered either
            raise LineTooLong(f"a line of over {limit} bytes is longer than the largest message the peer takes ({limit} bytes)")
        for line in parts:
            if len(line) > limit:
                raise LineTooLong(f"a line of {len(line)} bytes is longer than the largest message the peer takes "
                                  f"({limit} bytes)")
        return parts

    def flush(self) -> list[bytes]:
        last, self._partial = self._partial, b""
        return [last] if last else []

    def unpack(self, message: bytes) -> tuple[int, bytes]:
        if message == self.end:
            return Kind.EOF, b""
        return Kind.DATA, message + b"\n" if self.lines else message

    def reset(self, reason: str) -> bytes | None:
        return None


class Fault(enum.Enum):
    """Why a carried stream did not end cleanly."""

    INPUT = "input"  # this side's input could not be read or sent as it is
    OUTPUT = "output"  # this side could not write what arrived
    SESSION = "session"  # the session was lost or failed
    FAR_END = "far end"  # the far end reset, broke the format, or closed before this side's input ended


@dataclass
class RelayResult:
    """How one carried stream went."""

    sent: int = 0  # bytes from the endpoint into the session
    received: int = 0  # bytes from the session out to the endpoint
    clean: bool = False  # both directions ended and the session closed cleanly
    reason: str = ""  # why not, when not clean
    fault: Fault | None = None  # which side of the relay failed, when not clean
    #: A lost session's unacknowledged messages (``SessionLost.unacked``).
    unacked: tuple[tuple[int, bytes], ...] = ()


#: Looks at a session's first message: None to carry on, or why it was refused
#: (the screen has answered the far end itself).
Screen = Callable[[Channel, bytes], str | None]


class _Relay:
    """Both directions of one carried stream, one thread each.

    The inbound side keeps reading the session after the far end's end,
    so that a session lost while this end's program is idle still resets
    it. Whichever direction finishes second on the opening side closes the
    session; that close (or the far end's) ends the inbound wait."""

    def __init__(self, channel: Channel, endpoint: Endpoint, closer: bool, framing: Framing,
                 close_timeout: float) -> None:
        self.channel = channel
        self.close_timeout = close_timeout
        self.endpoint = endpoint
        self.closer = closer
        self.framing = framing
        self.result = RelayResult()
        self._lock = threading.Lock()
        self._eof_sent = False
        self._eof_received = False
        self._closing = False
        self._failed = False
        self._unsent = False  # the outbound side held data the session no longer took
        self._input_left = False  # the far end closed while this side's input had more

    def _fail(self, reason: str, fault: Fault, *, tell_peer: bool) -> None:
        """Reset the endpoint and, if the failure is ours, tell the far end to reset its own."""
        with self._lock:
            if self._failed:
                return
            self._failed = True
            self.result.reason = reason
            self.result.fault = fault
        reset = self.framing.reset(reason) if tell_peer else None
        if reset is not None:
            try:
                self.channel.send(reset, timeout=5)
            except (ReliableTCPError, TimeoutError):
                pass
        self.endpoint.abort()
        if reset is not None:
            try:
                self.channel.close(timeout=10)  # the RESET leaves before the session ends
            except ReliableTCPError:
                pass
        elif tell_peer:
            # No reset in this framing: the far end learns it from the session's
            # end. What was sent before the failure gets there first (briefly:
            # not through an outage), so an input error costs only what follows it.
            try:
                self.channel.flush(timeout=FLUSH_BEFORE_ABORT)
            except (ReliableTCPError, TimeoutError):
                pass
            self.channel.abort()

    def _one_direction_done(self, *, sent: bool) -> None:
        """Record an end; on the opening side, the second one closes the session."""
        with self._lock:
            if sent:
                self._eof_sent = True
            else:
                self._eof_received = True
            close = self.closer and self._eof_sent and self._eof_received and not self._closing and not self._failed
            self._closing = self._closing or close
        if close:
            try:
                self.channel.close(timeout=self.close_timeout)
            except SessionLost as exc:
                self._lost(exc)
            except (ReliableTCPError, TimeoutError) as exc:
                self._fail(f"the session did not end cleanly: {exc}", Fault.SESSION, tell_peer=False)

    def _lost(self, exc: SessionLost) -> None:
        # An abort is the far end's verdict that its stream failed (its output
        # closed, its input broke): what it acknowledged need not have reached
        # its endpoint, so nothing here passes for delivered.
        cause = exc.__cause__
        aborted = isinstance(cause, RejectedByPeer) and cause.reason == RejectReason.ABORTED
        if not aborted and self._eof_received and exc.unacked and all(payload == self.framing.end for _, payload in exc.unacked):
            # Both directions had ended here, and all the far end missed is
            # this side's end again: a side restarted from its journal sends
            # it once more, and the far end, which had it from before,
            # closed meanwhile. Every byte arrived both ways.
            self._eof_sent = True
            return
        self.result.unacked = self.result.unacked or exc.unacked
        self._fail(str(exc), Fault.SESSION, tell_peer=False)  # "session lost: why (n unacknowledged messages)"

    def _send(self, message: bytes) -> None:
        try:
            self.channel.send(message)
        except ChannelClosed:
            self._unsent = True
            raise

    def outbound(self) -> None:
        """Endpoint to session."""
        channel, endpoint, framing = self.channel, self.endpoint, self.framing
        limit = channel.max_sendable_size - framing.overhead
        try:
            while True:
                data = endpoint.read(limit)
                if not data:
                    if not self._failed and not getattr(endpoint, "aborted", False):
                        for message in framing.flush():
                            self._send(message)
                        channel.send(framing.end)
                        self._one_direction_done(sent=True)
                    return
                for message in framing.pack(data, limit):
                    self._send(message)
                self.result.sent += len(data)
        except LineTooLong as exc:
            self._fail(str(exc), Fault.INPUT, tell_peer=True)
        except OSError as exc:
            if not self._failed:
                self._fail(f"{endpoint.name}: {exc.strerror or exc}", Fault.INPUT, tell_peer=True)
        except ChannelClosed:
            pass  # the far end closed: inbound() judges what that cut short
        except SessionLost as exc:
            self._lost(exc)
        except ReliableTCPError as exc:
            self._fail(f"session ended: {exc}", Fault.SESSION, tell_peer=False)

    def inbound(self, first: bytes | None, screen: Screen | None) -> None:
        """Session to endpoint, until the session ends (cleanly once both ends passed)."""
        channel, endpoint = self.channel, self.endpoint
        try:
            while True:
                message, first = (first, None) if first is not None else (channel.recv(), None)
                if screen is not None:
                    refusal, screen = screen(channel, message), None
                    if refusal is not None:
                        self._fail(refusal, Fault.FAR_END, tell_peer=False)
                        return
                kind, body = self.framing.unpack(message)
                if kind == Kind.DATA and not self._eof_received:
                    try:
                        endpoint.write(body)
                    except OSError as exc:
                        self._fail(f"{endpoint.name}: {exc.strerror or exc}", Fault.OUTPUT, tell_peer=True)
                        return
                    self.result.received += len(body)
                elif kind == Kind.EOF:
                    # A journaled sender restarted after its end sends it again: harmless,
                    # but the endpoint still confirms it (a journal commits it).
                    endpoint.end_writing()
                    if not self._eof_received:
                        if endpoint.interactive:
                            endpoint.stop_reading()  # the person typing is done too: end this side's direction
                        self._one_direction_done(sent=False)
                elif kind == Kind.RESET:
                    self._fail(f"the far end was reset: {body.decode(errors='replace')}", Fault.FAR_END, tell_peer=False)
                    return
                else:
                    self._fail(f"tunnel protocol: unexpected message kind {kind}", Fault.FAR_END, tell_peer=True)
                    return
        except SessionLost as exc:
            self._lost(exc)
        except SessionHandedOver as exc:
            # Not an end: the restarted listener carries on. The endpoint is
            # abandoned as it stands (an --output keeps its sidecar).
            self._fail(str(exc), Fault.SESSION, tell_peer=False)
        except ChannelClosed:
            self._closed_by_far_end()
        except ReliableTCPError as exc:
            self._fail(f"session failed: {exc}", Fault.SESSION, tell_peer=False)

    def _closed_by_far_end(self) -> None:
        """The session closed before both directions ended here. Tunnels
        always send their end first: that is a failure. Where the far end's
        close ends its stream, stop reading this side's input (waking the
        outbound thread); :meth:`judge_close` decides once it stopped."""
        if self._eof_sent and self._eof_received:
            return
        if not self.framing.close_ends_stream:
            self._fail("the far end closed before its stream ended", Fault.FAR_END, tell_peer=False)
            return
        if not self._eof_received:
            self._eof_received = True
            self.endpoint.end_writing()
        if not self._eof_sent:
            self._input_left = self.endpoint.stop_reading()

    def judge_close(self) -> None:
        """After the outbound thread ended: input the far end's close cut short fails the stream."""
        if (self._input_left or self._unsent) and not self._eof_sent:
            self._fail("the far end closed the session before this side's input ended", Fault.FAR_END, tell_peer=False)

    def finish(self) -> None:
        """After both threads: close what is left."""
        try:
            self.channel.close(timeout=10)  # done already on a clean end; a lost session says so
        except SessionLost as exc:
            if not self._failed:
                self._lost(exc)
        except (ReliableTCPError, TimeoutError) as exc:
            if not self._failed:
                self._fail(f"the session did not end cleanly: {exc}", Fault.SESSION, tell_peer=False)
        if not self._failed:
            self.result.clean = True
            self.endpoint.close()
        else:
            self.endpoint.abort()


TUNNEL_FRAMING = TunnelFraming()


def relay(
    channel: Channel,
    endpoint: Endpoint,
    *,
    closer: bool,
    framing: Framing = TUNNEL_FRAMING,
    first: bytes | None = None,
    screen: Screen | None = None,
    close_timeout: float = 60.0,
    on_done: Callable[[RelayResult], None] | None = None,
) -> RelayResult:
    """Carry ``endpoint``'s stream over ``channel`` both ways until both
    directions ended (then the session closes cleanly) or something failed
    (then both ends' endpoints are reset). ``closer``: this side opened the
    session and closes it. ``first``: a message already taken from the
    channel. ``screen``: looks at the first message before it is carried.
    ``close_timeout``: how long the closing side's close may wait (to ride
    out an outage at the very end). Blocks; runs the outbound direction in
    a thread."""
    state = _Relay(channel, endpoint, closer, framing, close_timeout)
    outbound = threading.Thread(target=state.outbound, name=f"rtcat-out-{endpoint.name}", daemon=True)
    outbound.start()
    state.inbound(first, screen)
    outbound.join()
    state.judge_close()
    state.finish()
    if state._failed:
        logger.warning("%s: reset: %s", endpoint.name, state.result.reason)
    if on_done is not None:
        on_done(state.result)
    return state.result
