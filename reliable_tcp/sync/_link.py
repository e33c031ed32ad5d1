"""One TCP connection of a channel: its socket, optional TLS, its reader and its writer.

The link knows its channel only through :class:`LinkOwner`, defined here,
so this module imports nothing from ``channel.py`` and can be driven alone
over ``socket.socketpair()``.

Threads: the **reader** is the only caller of ``recv_into`` and of TLS
decryption; the **writer** is the only caller of ``sendall`` and of TLS
encryption. Neither holds the owner's lock during a socket call or any
cryptography: the owner's lock is taken inside the owner's methods only.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Protocol

from ..common.sockets import close_socket, has_pending_input, probe_pending_error, seconds_since_peer_ack
from ..core.frames import ReceiveBuffer
from ._deadline import Deadline
from .tls import TLSLayer

__all__ = ["Link", "LinkOwner", "WAIT", "Waiting"]

logger = logging.getLogger(__name__)

_RECV_START = 16 * 1024
_RECV_BUFFER = 256 * 1024


_IOV_MAX = 1024  # buffers one sendmsg takes (Linux UIO_MAXIOV)


class Waiting:
    """The type of :data:`WAIT`."""


#: From an owner's ``produce``: nothing to write yet.
WAIT = Waiting()


def _send_parts(sock: socket.socket, parts: list[bytes]) -> None:
    """sendall for a list of buffers, without joining them (sendmsg)."""
    views: list[memoryview | bytes] = list(parts)
    while views:
        sent = sock.sendmsg(views[:_IOV_MAX])
        while sent:
            first = views[0]
            if sent >= len(first):
                sent -= len(first)
                views.pop(0)
            else:
                views[0] = memoryview(first)[sent:]
                sent = 0


class LinkOwner(Protocol):
    """What a link needs from the channel it serves (called without any lock held)."""

    def link_received(self, link: Link, data: bytes | memoryview | ReceiveBuffer, now: float) -> bool:
        """Bytes arrived (possibly none: TLS records with nothing for the
        session), as bytes or in the reader's buffer (whose undecoded tail
        the session leaves there). Returns once the link may read again (the
        receive queue has room); False when the reader should stop."""

    def link_output(self, link: Link) -> bytes | list[bytes] | None:
        """Block until there is something to write and return it (one buffer,
        or a list to send as they are); ``None`` once nothing more will be
        written on this link."""

    def link_ended(self, link: Link, error: BaseException | None, reason: str, crashed: bool) -> None:
        """The connection failed (``error``), saw the peer's EOF (no error),
        or one of its threads crashed (``crashed``: a bug, reported once)."""


class Link:
    """One connection: start it, then the owner hears of its bytes and its end."""

    def __init__(self, sock: socket.socket, owner: LinkOwner, *, tls: TLSLayer | None = None, order: int = 0) -> None:
        self.sock = sock
        self.tls = tls
        #: The listener's accept order: a later connection of a session wins.
        self.order = order
        self.closed = False
        # The writer's hand-off (see "The writer's hand-off" below; the owner's lock).
        self._writer_waiting = False
        self._direct_writing = False
        self._left_over = b""
        #: The writer put the last byte out and sent FIN (an orderly end).
        self.finished = threading.Event()
        self._owner = owner
        self._threads: list[threading.Thread] = []
        self._done_lock = threading.Lock()
        self._done = 0  # threads that returned

    @property
    def tls_pending(self) -> bool:
        """TLS produced records (a key update answer) that the writer must send."""
        return self.tls is not None and self.tls.has_output

    def start(self, name: str) -> None:
        """Start the reader and the writer."""
        for role, target in (("reader", self._read), ("writer", self._write)):
            thread = threading.Thread(target=self._guard, args=(target,), name=f"{name}-{role}", daemon=True)
            thread.start()
            # Listed once started: a teardown racing this start joins only
            # threads that can be joined (joining one not yet started raises).
            self._threads.append(thread)

    def join(self, deadline: Deadline) -> bool:
        """Wait for both threads within ``deadline``; whether they ended."""
        return all([deadline.join(thread) for thread in self._threads])

    @property
    def threads(self) -> list[threading.Thread]:
        """The reader and the writer."""
        return list(self._threads)

    @property
    def running(self) -> bool:
        """Whether the reader or the writer is still alive (or was never started)."""
        return not self._threads or any(thread.is_alive() for thread in self._threads)

    # ------------------------------------------------------------- threads

    def _guard(self, target: object) -> None:
        try:
            target()  # type: ignore[operator]
        except Exception as exc:  # a bug: the owner ends its channel, chained to this
            logger.exception("%s failed", threading.current_thread().name)
            self._owner.link_ended(self, exc, f"internal failure in {threading.current_thread().name}: {exc!r}", True)
        finally:
            with self._done_lock:
                self._done += 1
                both = self._done == 2
            if both and not self.closed:
                # Both directions ended in order (our FIN out, the peer's EOF in):
                # release the socket even if nobody tears the channel down.
                self.close(abort=False)

    def _read(self) -> None:
        if self.tls is None:
            self._read_in_place()
        else:
            self._read_tls()

    def _read_in_place(self) -> None:
        # Frames are decoded straight from the buffer the kernel wrote into
        # (core.frames.ReceiveBuffer): no backlog copy, however reads split them.
        buffer = ReceiveBuffer(_RECV_START, _RECV_BUFFER)
        while not self.closed:
            count = self._receive(buffer.space())
            if count is None:
                return
            now = time.monotonic()
            buffer.filled(count)
            if self.closed or not self._owner.link_received(self, buffer, now):
                return
            buffer.settle()

    def _receive(self, into: bytearray | memoryview) -> int | None:
        """One read into ``into``: the count, or None once the connection
        ended (an error, or the peer's EOF; the owner was told)."""
        try:
            count = self.sock.recv_into(into)
        except OSError as exc:
            self._ended(exc, "")
            return None
        if count == 0:
            self._ended(None, "connection closed by peer")
            return None
        return count

    def _read_tls(self) -> None:
        # Decryption makes new bytes anyway: read into a plain buffer that
        # starts small (idle sessions are most sessions) and doubles
        # whenever a read fills it, up to _RECV_BUFFER.
        assert self.tls is not None
        buffer = bytearray(_RECV_START)
        view = memoryview(buffer)
        try:
            while not self.closed:
                count = self._receive(buffer)
                if count is None:
                    return
                now = time.monotonic()
                try:
                    data = self.tls.decrypt(view[:count])
                except ssl.SSLError as exc:  # a TLS alert or a corrupt record
                    self._ended(exc, f"TLS error: {exc}")
                    return
                if self.tls.closed_by_peer:
                    self._ended(None, "TLS closed by peer")
                    return
                if self.closed or not self._owner.link_received(self, data, now):
                    return
                if count == len(buffer) and count < _RECV_BUFFER:
                    view.release()
                    buffer = bytearray(2 * count)
                    view = memoryview(buffer)
        finally:
            view.release()

    def _write(self) -> None:
        while True:
            data = self._owner.link_output(self)
            if data is None:
                break
            if self.tls is not None:
                data = self.tls.encrypt(data if isinstance(data, bytes) else b"".join(data))
            if not data:
                continue
            try:
                if isinstance(data, bytes):
                    self.sock.sendall(data)
                else:
                    _send_parts(self.sock, data)
            except OSError as exc:
                self._ended(exc, "")
                return
        if not self.closed:
            # The session's last frame is out: an orderly FIN, so nothing we
            # sent (a REJECT, a CLOSE_ACK) is destroyed by a reset.
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.finished.set()

    def _ended(self, error: BaseException | None, reason: str) -> None:
        if not self.closed:
            self._owner.link_ended(self, error, reason, False)

    # --------------------------------------------------- the writer's hand-off
    #
    # Output normally leaves through the writer thread. When the writer is
    # idle, the thread that produced output (a send(), or the reader that
    # answers a PING) may write it itself with one non-blocking send instead:
    # waking the writer costs two thread switches, which dominate a
    # request/reply. Three fields make that safe; all are read and written
    # under the owner's lock, and the writer waits on the owner's condition:
    #
    # - _writer_waiting: the writer is parked in next_output's wait. Only then
    #   may another thread take output: a running writer may hold output it
    #   has not sent yet, and newer bytes written beside it would overtake it.
    # - _direct_writing: a thread took output and sends it outside the lock.
    #   A writer woken meanwhile waits until it is done, for the same reason.
    # - _left_over: what the non-blocking send could not take; the writer
    #   sends it before anything newer.
    #
    # Not with TLS: only the writer encrypts, so records leave in order.

    def take_output(self, output: Callable[[], bytes]) -> bool:
        """Owner's lock held: if the writer is idle and nobody else writes,
        take ``output()`` for the calling thread to send with
        :meth:`write_taken` once the lock is released. Whether it took it."""
        if not self._writer_waiting or self._direct_writing or self.tls is not None:
            return False
        self._left_over = output()
        self._direct_writing = True
        return True

    def write_taken(self, lock: threading.Lock, writable: threading.Condition, more: Callable[[], bool]) -> None:
        """Outside the owner's ``lock``: send what :meth:`take_output` took,
        without blocking. What does not fit is left for the writer, which is
        woken (``writable``) for it, or when ``more()`` (checked under the
        lock) says it has work anyway."""
        data = self._left_over
        try:
            sent = self.sock.send(data, socket.MSG_DONTWAIT)
        except OSError:
            sent = 0  # full, or broken: the writer sends it, or meets the same error and reports it
        with lock:
            self._left_over = data[sent:]
            self._direct_writing = False
            if self._left_over or more():
                self._writer_waiting = False
                writable.notify_all()

    def wake_writer(self, writable: threading.Condition) -> None:
        """Owner's lock held: new output for an idle writer (one wake-up is
        enough: the writer takes everything there is)."""
        if self._writer_waiting:
            self._writer_waiting = False
            writable.notify()

    def next_output(
        self,
        writable: threading.Condition,
        carries: Callable[[Link], bool],
        produce: Callable[[Link], bytes | list[bytes] | None | Waiting],
    ) -> bytes | list[bytes] | None:
        """The writer's next bytes (owner's lock held; waits on ``writable``):
        None at once when this link no longer carries the session
        (``carries(link)``); what a direct write left over; then
        ``produce(link)``: bytes, :data:`WAIT` for nothing yet, or None once
        nothing more goes out on this link."""
        while True:
            if not carries(self):
                return None
            if self._direct_writing:
                pass  # another thread is sending: what comes next waits for it
            elif self._left_over:
                data, self._left_over = self._left_over, b""
                return data
            else:
                output = produce(self)
                if output is not WAIT:
                    return output  # type: ignore[return-value]
            self._writer_waiting = True  # a producer wakes it (wake_writer), or writes itself
            writable.wait()
            self._writer_waiting = False

    # ------------------------------------------------------------- closing

    def close(self, *, abort: bool) -> None:
        """Close the socket, waking both threads (``abort``: with RST)."""
        self.closed = True
        close_socket(self.sock, abort=abort)

    # -------------------------------------------------------------- probes

    def has_pending_input(self) -> bool:
        """Bytes wait in the kernel for the reader (peer alive, reader starved)."""
        return not self.closed and has_pending_input(self.sock)

    def pending_error(self) -> OSError | None:
        """An error the kernel already holds for this socket (zero-byte send)."""
        return None if self.closed else probe_pending_error(self.sock)

    def seconds_since_peer_ack(self) -> float | None:
        """How long ago the peer's kernel last acknowledged anything (see
        ``common.sockets.seconds_since_peer_ack``), or None where unknown."""
        return None if self.closed else seconds_since_peer_ack(self.sock)
