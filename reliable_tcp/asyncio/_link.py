"""One connection on the event loop: an ``asyncio.Protocol`` that hands
bytes and the connection's end to whoever owns it now.

A connection starts owned by the listener's handshake (server side) or
directly by a channel (client side); once a HELLO is accepted the
handshake hands it to the session's channel (``owner`` changes). The
protocol knows its owner only through :class:`ProtocolOwner`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import threading
from asyncio.selector_events import BaseSelectorEventLoop
from collections import deque
from typing import Any, Protocol

from ..common.sockets import input_waits, seconds_since_peer_ack
from ..common.timing import REJECT_LINGER

__all__ = ["LinkProtocol", "ProtocolOwner", "NO_OWNER"]


class ProtocolOwner(Protocol):
    """What a connection needs from its owner (all called on the loop)."""

    def link_data(self, link: LinkProtocol, data: bytes) -> None:
        """Bytes arrived."""

    def link_lost(self, link: LinkProtocol, error: BaseException | None) -> None:
        """The connection ended (``error`` None: an orderly EOF or our own close)."""

    def link_writable(self, link: LinkProtocol) -> None:
        """The transport's buffer drained below its low-water mark again."""


class _NoOwner:
    """The owner of a connection nobody listens to: not yet taken (a client's
    dial), refused, or replaced by a newer one. Whatever it reports is dropped."""

    def link_data(self, link: LinkProtocol, data: bytes) -> None:
        pass

    def link_lost(self, link: LinkProtocol, error: BaseException | None) -> None:
        pass

    def link_writable(self, link: LinkProtocol) -> None:
        pass


#: Shared: it holds no state.
NO_OWNER: ProtocolOwner = _NoOwner()

#: The most received bytes handed to the owner in one turn of the event loop.
#: A read can bring 256 KiB; as 20-byte frames that is 13,000 of them and
#: about 0.2 s of decoding, during which every other session on the loop
#: would miss its heartbeats. In slices, a peer's flood costs its own
#: session's time, and the loop serves the others in between.
READ_SLICE = 16 * 1024


#: How much one read takes at most (asyncio's own plain reads take 256 KiB too).
READ_SIZE = 256 * 1024

# asyncio's plain protocol path receives each read into a new bytes object
# of READ_SIZE, which the allocator maps and unmaps (mmap, mremap, munmap and
# page faults for a 20-byte PING: most of what an idle session cost). As a
# BufferedProtocol, a connection reads into a buffer shared by every
# connection of its event-loop thread instead, and keeps a copy of just the
# bytes that arrived. Sharing is safe where the transport calls get_buffer
# and buffer_updated back to back (the selector loops, with or without TLS);
# elsewhere (a proactor loop keeps the buffer while a read is in flight),
# each connection gets a buffer of its own.
_SHARED = threading.local()


def _shared_read_buffer() -> memoryview:
    view: memoryview | None = getattr(_SHARED, "view", None)
    if view is None:
        view = memoryview(bytearray(READ_SIZE))
        _SHARED.view = view
    return view


class LinkProtocol(asyncio.BufferedProtocol):
    """The transport of one connection, and its flow-control state."""

    def __init__(self, owner: ProtocolOwner, order: int = 0) -> None:
        self.owner = owner
        #: The listener's accept order: a later connection of a session wins.
        self.order = order
        self.transport: asyncio.Transport | None = None
        self.write_paused = False  # the transport's buffer is above its high-water mark
        self.read_paused = False  # we stopped reading (the receive queue is full)
        self.lost = False
        #: Received bytes not yet handed over, cut into slices of READ_SLICE
        #: at most (each turn of the loop hands one over). Cut when they
        #: arrive, so that each is copied once and handed over as it is, and
        #: no buffer of a whole read's size is allocated and freed per read:
        #: glibc returns such buffers to the kernel and takes them back
        #: (brk, page faults), and how often depends on the build's timing
        #: (the compiled asyncio 64 KiB receiver used a fifth more CPU with
        #: a single bytearray here: docs/performance.md).
        self._backlog: deque[bytes] = deque()
        self._slicing = False  # a call to hand over the next slice is scheduled
        self.closed_event = asyncio.Event()
        #: Set before the transport exists: reset the connection as soon as it does
        #: (the listener is full or closing; the transport comes after the factory returns).
        self.refuse_when_made = False
        #: Set before the transport exists: send these bytes (a REJECT), then
        #: end in order (the listener has too many handshakes under way).
        self.reject_when_made: bytes | None = None
        self._read_buffer: memoryview | None = None  # where the transport reads into (see _SHARED)

    # ------------------------------------------------------------ asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.refuse_when_made:
            transport.abort()
        elif self.reject_when_made is not None:
            transport.write(self.reject_when_made)
            self.end_after_reject(asyncio.get_running_loop(), REJECT_LINGER)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._read_buffer is None:
            if isinstance(asyncio.get_running_loop(), BaseSelectorEventLoop):
                self._read_buffer = _shared_read_buffer()
            else:
                self._read_buffer = memoryview(bytearray(READ_SLICE))
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        assert self._read_buffer is not None
        self._arrived(self._read_buffer[:nbytes])

    def data_received(self, data: bytes) -> None:
        self._arrived(data)

    def _arrived(self, data: bytes | memoryview) -> None:
        """Bytes read (``data`` may be a view of the shared buffer: the owner
        gets copies, and the backlog keeps its own)."""
        if self._backlog:  # earlier bytes still wait their turn: these go after them
            self._cut_into_backlog(data, 0)
            return
        if len(data) <= READ_SLICE:
            self.owner.link_data(self, bytes(data))
            return
        self._cut_into_backlog(data, READ_SLICE)
        # Read no more until the backlog is handed over: it stays one read's worth.
        assert self.transport is not None
        self.transport.pause_reading()
        self.owner.link_data(self, bytes(data[:READ_SLICE]))
        self._hand_over_soon()

    def _cut_into_backlog(self, data: bytes | memoryview, start: int) -> None:
        view = memoryview(data)
        append = self._backlog.append
        for offset in range(start, len(view), READ_SLICE):
            append(bytes(view[offset : offset + READ_SLICE]))

    def _hand_over_soon(self) -> None:
        if not self._slicing and self._backlog and not self.read_paused and not self.lost:
            self._slicing = True
            asyncio.get_running_loop().call_soon(self._hand_over_slice)

    def _hand_over_slice(self) -> None:
        """The next slice of the backlog to the owner; reading resumes once it
        is empty (unless the owner paused it meanwhile)."""
        self._slicing = False
        if self.lost or self.read_paused:
            return  # the owner's resume_reading (or nothing, once lost) goes on
        self.owner.link_data(self, self._backlog.popleft())
        if self._backlog:
            self._hand_over_soon()
        elif not self.read_paused and not self.lost and self.transport is not None:
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        # Reading was paused while a backlog waited, so no EOF can be behind
        # it: the connection was reset or closed by us, and what it held goes
        # as unread bytes go with a reset.
        self._backlog.clear()
        self.lost = True
        self.closed_event.set()
        self.owner.link_lost(self, exc)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.owner.link_writable(self)

    # -------------------------------------------------------------- helpers

    def write(self, parts: list[bytes]) -> None:
        """Hand ``parts`` to the transport (it buffers what the socket won't take now)."""
        if self.transport is not None and not self.lost:
            self.transport.writelines(parts)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.read_paused and not self.lost:
            self.read_paused = True
            self.transport.pause_reading()  # a no-op while a backlog already paused it

    def resume_reading(self) -> None:
        if self.transport is not None and self.read_paused and not self.lost:
            self.read_paused = False
            if self._backlog:
                self._hand_over_soon()  # the backlog first; it resumes the transport once empty
            else:
                self.transport.resume_reading()

    def end_after_reject(self, loop: asyncio.AbstractEventLoop, linger: float) -> None:
        """After a REJECT: FIN once what is buffered has left, and keep reading
        (what arrives is discarded) until the peer's EOF closes the
        connection, or ``linger`` passes. Closing at once would reset the
        connection while the peer's bytes wait unread here, and a reset can
        destroy the REJECT in the peer's receive buffer before it is read
        (docs/protocol.md 7.4, "Orderly end")."""
        if self.transport is None or self.lost:
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
            loop.call_later(linger, functools.partial(self.close, abort=False))
        else:
            self.close(abort=False)

    def close(self, *, abort: bool) -> None:
        """End the connection: in order (buffered bytes, then FIN) or with RST."""
        if self.transport is None or self.lost:
            return
        if abort:
            self.transport.abort()
        else:
            self.transport.close()

    def _socket(self) -> Any:
        return None if self.transport is None else self.transport.get_extra_info("socket")

    def has_pending_input(self) -> bool:
        """Bytes (or an EOF) wait in the kernel or in the backlog: the loop,
        not the peer, is late."""
        if self._backlog:  # emptied when the connection is lost
            return True
        sock = self._socket()
        if sock is None or self.lost:
            return False
        return input_waits(sock)

    def pending_error(self) -> OSError | None:
        """The error the kernel already holds for this socket (reset, timeout),
        or None: the zero-byte probe of the threaded front end, read as
        SO_ERROR because the loop owns the socket's sends."""
        sock = self._socket()
        if sock is None or self.lost:
            return None
        try:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as exc:
            return exc
        return OSError(code, os.strerror(code)) if code else None

    def seconds_since_peer_ack(self) -> float | None:
        """See ``common.sockets.seconds_since_peer_ack``."""
        sock = self._socket()
        return None if sock is None or self.lost else seconds_since_peer_ack(sock)
