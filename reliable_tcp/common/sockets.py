"""Socket plumbing for the threaded shell: options, the error map, probing, closing.

See docs/design.md and the Linux facts it cites: a zero-byte send only
surfaces an error the kernel already holds; ``shutdown`` (not ``close``)
wakes a thread blocked in ``recv``; ``TimeoutError`` with errno ETIMEDOUT is
the kernel's verdict, without errno it is our own ``settimeout``.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import struct
from typing import Any

from ..core.config import SessionConfig

__all__ = [
    "configure_socket",
    "link_error_reason",
    "probe_pending_error",
    "has_pending_input",
    "seconds_since_peer_ack",
    "close_socket",
]

_TCP_INFO_U32 = struct.Struct("I")
_TCP_INFO_LAST_ACK_RECV_OFFSET = 56  # tcp_info.tcpi_last_ack_recv: milliseconds since the last ACK

logger = logging.getLogger(__name__)

_LINK_ERRNOS = {
    errno.ECONNRESET: "connection reset by peer",
    errno.EPIPE: "broken pipe",
    errno.ETIMEDOUT: "connection timed out by the kernel",
    errno.ECONNREFUSED: "connection refused",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ECONNABORTED: "connection aborted",
    errno.ENETDOWN: "network down",
    errno.EHOSTDOWN: "host down",
    errno.ENOTCONN: "not connected",
    errno.EBADF: "socket closed",
}


def configure_socket(sock: socket.socket, config: SessionConfig) -> None:
    """Low latency, and kernel backstops for liveness derived from the heartbeat.

    Each option is guarded so that platforms without it still work.
    """
    _set(sock, socket.IPPROTO_TCP, "TCP_NODELAY", 1)
    _set(sock, socket.SOL_SOCKET, "SO_KEEPALIVE", 1)
    interval = max(1, int(round(config.heartbeat_interval)))
    misses = max(1, int(round(config.dead_after_seconds / config.heartbeat_interval)))
    _set(sock, socket.IPPROTO_TCP, "TCP_KEEPIDLE", interval)
    _set(sock, socket.IPPROTO_TCP, "TCP_KEEPINTVL", interval)
    _set(sock, socket.IPPROTO_TCP, "TCP_KEEPCNT", misses)
    # No TCP_USER_TIMEOUT: Linux applies it to zero-window probing too, so a
    # peer that is alive but not reading would be cut off as if dead. The
    # heartbeat deadline detects a dead link instead, and its verdict shuts
    # the socket down, which also frees a writer blocked on a dead link.


def _set(sock: socket.socket, level: int, name: str, value: int) -> None:
    option = getattr(socket, name, None)
    if option is None:
        return
    try:
        sock.setsockopt(level, option, value)
    except OSError as exc:  # e.g. not a TCP socket (socketpair in tests)
        logger.debug("could not set %s: %s", name, exc)


def link_error_reason(exc: BaseException) -> str | None:
    """Why ``exc`` means the connection is gone, or None when it does not.

    ``TimeoutError`` without an errno is our own deadline expiring, which
    says nothing about the link; with ETIMEDOUT it is the kernel's verdict.
    """
    if isinstance(exc, TimeoutError) and exc.errno is None:
        return None
    if isinstance(exc, OSError):
        if exc.errno in _LINK_ERRNOS:
            return _LINK_ERRNOS[exc.errno]
        return f"socket error: {exc}"
    return None


def probe_pending_error(sock: socket.socket) -> OSError | None:
    """A non-blocking zero-byte send: returns the error the kernel already
    holds for this socket (reset, timeout, closed), or None.

    On Linux this sends no packet at all, so it can't detect a pulled
    cable; the heartbeat deadline does that. It only turns a known failure
    into an immediate verdict instead of one at the next deadline.
    """
    try:
        sock.send(b"", socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        return exc
    return None


def has_pending_input(sock: socket.socket) -> bool:
    """Whether received bytes wait in the kernel for our reader (a peek that
    takes nothing and never blocks). Such bytes prove the peer alive even
    when the reader thread has not run for a while."""
    try:
        return bool(socket.socket.recv(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return False  # a broken socket: the reader will report it


_READABLE = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR


def input_waits(sock: socket.socket) -> bool:
    """Whether bytes, an EOF or an error wait on ``sock`` for its reader, as
    select() would call it readable, without taking anything. ``poll``, not
    ``select``: select() refuses descriptor numbers of 1,024 and more, which
    a process with a thousand connections has."""
    try:
        poller = select.poll()
        poller.register(sock.fileno(), _READABLE)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return False  # closed meanwhile: whoever reads it reports that


def seconds_since_peer_ack(sock: Any) -> float | None:
    """How long ago the peer's kernel last acknowledged anything (Linux
    TCP_INFO ``tcpi_last_ack_recv``), or None where unknown. It keeps
    acknowledging our pings (and probing our zero window) while our own
    reader is paused, so this tells a live peer from a dead link.

    (``tcpi_unacked`` can't serve: a segment that a local firewall rule
    or a downed interface refuses is never in flight, so it stays 0.)"""
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, 104)
    except (OSError, ValueError):
        return None
    if len(info) < _TCP_INFO_LAST_ACK_RECV_OFFSET + 4:
        return None
    (millis,) = _TCP_INFO_U32.unpack_from(info, _TCP_INFO_LAST_ACK_RECV_OFFSET)
    return float(millis) / 1000.0


def close_socket(sock: socket.socket, *, abort: bool = False) -> None:
    """Wake every thread blocked on ``sock`` and release it.

    ``abort`` sends RST (SO_LINGER 0) instead of an orderly FIN, freeing
    the kernel state at once; used for dead or misbehaving peers.
    """
    how = socket.SHUT_RDWR
    if abort:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        # SHUT_WR would send a FIN before the RST. Only a writer blocked on a
        # full send buffer needs it to wake, and then the FIN waits behind
        # that data anyway; otherwise SHUT_RD wakes the reader silently.
        if _unsent_bytes(sock) == 0:
            how = socket.SHUT_RD
    try:
        sock.shutdown(how)  # close() alone does not wake recv() on Linux
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _unsent_bytes(sock: socket.socket) -> int | None:
    """Bytes in the socket's send queue (Linux SIOCOUTQ), or None if unknown."""
    try:
        import fcntl
        import termios

        buffer = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (ImportError, OSError, AttributeError, ValueError):
        return None
    return int(struct.unpack("i", buffer)[0])
