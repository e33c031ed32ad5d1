"""Frame codec: the byte layout of every frame and an incremental decoder.

Layout (all integers big-endian; see docs/protocol.md for the full text)::

    0      2        3      4         8        12
    +------+--------+------+---------+--------+----------------+
    | "RT" | version| type | length  | crc32  | body (length)  |
    +------+--------+------+---------+--------+----------------+

``crc32`` is zlib's CRC-32 of header bytes 0-7 followed by the body, so a
flipped bit anywhere in a frame is detected rather than delivered.

The decoder checks the length field against ``max_frame_size`` before it
waits for (or allocates) the body, and on any input either returns frames
or raises :class:`~reliable_tcp.exceptions.FrameError`.
"""

from __future__ import annotations

import enum
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Union

from ..exceptions import CorruptFrame, FrameError, FrameTooLarge, UnsupportedVersion

__all__ = [
    "PROTOCOL_VERSION",
    "MAGIC",
    "HEADER_SIZE",
    "ID_SIZE",
    "MAX_SEQ",
    "MIN_FRAME_LIMIT",
    "DATA_OVERHEAD",
    "DATA_PER_MESSAGE_OVERHEAD",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_MESSAGE_SIZE_LIMIT",
    "MIN_DATA_FRAME_BODY",
    "max_frame_body",
    "FrameType",
    "RejectReason",
    "RETRYABLE_REJECTS",
    "RETRY_AFTER_PREFIX",
    "MAX_RETRY_AFTER_MS",
    "with_retry_after",
    "retry_after",
    "Hello",
    "Accept",
    "Reject",
    "Data",
    "Ack",
    "Ping",
    "Pong",
    "Close",
    "CloseAck",
    "Challenge",
    "Proof",
    "NONCE_SIZE",
    "MAC_SIZE",
    "Frame",
    "encode",
    "encode_data",
    "encode_data_parts",
    "ZERO_COPY_SIZE",
    "FrameDecoder",
    "ReceiveBuffer",
]

PROTOCOL_VERSION = 1
MAGIC = b"RT"
ID_SIZE = 16
MAX_SEQ = 2**64 - 1
MAX_REJECT_TEXT = 512
#: Every control frame (REJECT with its longest text included) fits in this.
MIN_FRAME_LIMIT = 1024
#: A side that does not announce its message limit takes messages up to this size.
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
#: Every receiver takes DATA frames of this many body bytes, whatever its message limit.
MIN_DATA_FRAME_BODY = 256 * 1024

_HEADER = struct.Struct(">2sBBI")  # magic, version, type, body length
_CRC = struct.Struct(">I")
HEADER_SIZE = _HEADER.size + _CRC.size
_PREFIX = MAGIC + bytes([PROTOCOL_VERSION])

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_HELLO = struct.Struct(f">B{ID_SIZE}s{ID_SIZE}sQ")
_ACCEPT = struct.Struct(f">B{ID_SIZE}s{ID_SIZE}sQ")
_DATA_HEAD = struct.Struct(">QQI")  # first seq, piggybacked ack, message count
_REJECT_HEAD = struct.Struct(">B")

#: Bytes a DATA frame costs on top of its messages, and per message.
DATA_OVERHEAD = HEADER_SIZE + _DATA_HEAD.size
DATA_PER_MESSAGE_OVERHEAD = _U32.size
#: The largest message limit a side may announce (its frame limit must fit the u32 length).
MAX_MESSAGE_SIZE_LIMIT = 2**32 - 1 - _DATA_HEAD.size - _U32.size


def max_frame_body(max_message_size: int) -> int:
    """The largest frame body a side with this message limit accepts (and so
    the largest its peer may send): one message of that size in a DATA frame,
    and never less than :data:`MIN_DATA_FRAME_BODY`, so batches of small
    messages always have room."""
    return max(max_message_size, MIN_DATA_FRAME_BODY) + _DATA_HEAD.size + _U32.size


FLAG_RESUME = 0x01
FLAG_AUTH = 0x02  # HELLO only: a client nonce follows; the pre-shared-key exchange applies
FLAG_LIMITS = 0x04  # HELLO and ACCEPT: the sender's max_message_size (u32) follows
FLAG_QUIET = 0x08  # HELLO: the client asks for the quiet heartbeat; ACCEPT: the server agrees (protocol.md 6.1)
NONCE_SIZE = 16
MAC_SIZE = 32  # HMAC-SHA256
_CHALLENGE = struct.Struct(f">{NONCE_SIZE}s{MAC_SIZE}s")


class FrameType(enum.IntEnum):
    """The type byte of a frame."""

    HELLO = 1
    ACCEPT = 2
    REJECT = 3
    DATA = 4
    ACK = 5
    PING = 6
    PONG = 7
    CLOSE = 8
    CLOSE_ACK = 9
    CHALLENGE = 10
    PROOF = 11


class RejectReason(enum.IntEnum):
    """Why a handshake (or a session) was refused; carried by REJECT."""

    #: Unknown, expired or closed session, or a wrong secret. One code on
    #: purpose: a failed resume must not reveal whether the session exists.
    SESSION_UNKNOWN = 1
    UNSUPPORTED_VERSION = 2
    #: The resume claimed a sequence number the other side cannot satisfy.
    BAD_SEQUENCE = 3
    SERVER_BUSY = 4
    PROTOCOL_ERROR = 5
    HANDSHAKE_TIMEOUT = 6
    #: The pre-shared-key exchange failed (or was required and missing).
    AUTH_FAILED = 7
    #: The sender's application aborted the session (``Channel.abort``).
    ABORTED = 8
    #: Resume of a session another node issued (its node id, in the session
    #: id, differs from this node's): the route is wrong, maybe only for now.
    NOT_HERE = 9


#: Codes that refuse only this attempt: the client tries again later.
RETRYABLE_REJECTS = frozenset({RejectReason.SERVER_BUSY, RejectReason.HANDSHAKE_TIMEOUT, RejectReason.NOT_HERE})

#: A SERVER_BUSY REJECT's text may begin with a hint of when to try again
#: (docs/protocol.md 3, "Retry hint"): ``retry-after-ms=N`` and either the
#: end of the text or "; " and the human-readable rest. Text is
#: informational to a peer that does not know the hint, so it stays version 1.
RETRY_AFTER_PREFIX = "retry-after-ms="
#: The longest hint a receiver takes (one hour); a longer one is read as this.
MAX_RETRY_AFTER_MS = 3_600_000
_RETRY_AFTER = re.compile(r"retry-after-ms=([0-9]{1,10})(?:; |$)")


def with_retry_after(seconds: float, text: str) -> str:
    """``text`` with the hint "try again in ``seconds``" in front."""
    milliseconds = max(0, min(MAX_RETRY_AFTER_MS, round(seconds * 1000)))
    return f"{RETRY_AFTER_PREFIX}{milliseconds}; {text}" if text else f"{RETRY_AFTER_PREFIX}{milliseconds}"


def retry_after(reason: int, text: str) -> float | None:
    """The hint a REJECT carries, in seconds, or None (none, another code, or not well formed)."""
    if reason != RejectReason.SERVER_BUSY:
        return None
    match = _RETRY_AFTER.match(text)
    if match is None:
        return None
    return min(int(match.group(1)), MAX_RETRY_AFTER_MS) / 1000


#: Where a session id carries the node id of the listener that issued it:
#: its first two bytes, big-endian (0: no node id). In a resuming HELLO
#: frame that is frame bytes 13 and 14 (12 header bytes, then flags).
NODE_ID_SIZE = 2
NODE_ID_FRAME_OFFSET = 13
MAX_NODE_ID = 65535


def node_id_of(session_id: bytes) -> int:
    """The node id a session id carries (0: none)."""
    return int.from_bytes(session_id[:NODE_ID_SIZE], "big")


@dataclass(frozen=True, slots=True)
class Hello:
    """Client -> server, first frame of every connection: start or resume a session.

    ``expect`` is the next sequence number the client expects from the
    server (1 for a new session). A new session sends zero id and secret.
    """

    resume: bool
    session_id: bytes
    secret: bytes
    expect: int
    #: With a pre-shared key: the client's fresh 16-byte nonce (flag AUTH).
    auth_nonce: bytes | None = None
    #: The client's max_message_size (flag LIMITS); None: the default, 1 MiB.
    max_message: int | None = None
    #: The client asks for the quiet heartbeat (flag QUIET): the server
    #: then answers no PING (protocol.md 6.1).
    quiet: bool = False


@dataclass(frozen=True, slots=True)
class Challenge:
    """Server -> client, pre-shared key only: the server's fresh nonce and its
    proof of the key, HMAC-SHA256(key, "rtcp-v1 server" | client nonce | server nonce)."""

    nonce: bytes
    proof: bytes


@dataclass(frozen=True, slots=True)
class Proof:
    """Client -> server, pre-shared key only: HMAC-SHA256(key, "rtcp-v1 client" |
    server nonce | client nonce | the HELLO frame as sent)."""

    proof: bytes


@dataclass(frozen=True, slots=True)
class Accept:
    """Server -> client: the session is open; ``secret`` replaces the old one."""

    resumed: bool
    session_id: bytes
    secret: bytes
    expect: int
    #: The server's max_message_size (flag LIMITS); None: the default, 1 MiB.
    max_message: int | None = None
    #: The server agrees to the quiet heartbeat the HELLO asked for (flag QUIET).
    quiet: bool = False


@dataclass(frozen=True, slots=True)
class Reject:
    """Either side: the handshake or session is refused, with a reason."""

    reason: RejectReason
    text: str = ""


@dataclass(frozen=True, slots=True)
class Data:
    """A run of consecutive messages ``first_seq, first_seq + 1, ...``.

    ``ack`` is a piggybacked cumulative acknowledgement (0 acknowledges nothing).
    """

    first_seq: int
    ack: int
    messages: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    """Cumulative acknowledgement: every message up to ``ack`` was received."""

    ack: int


@dataclass(frozen=True, slots=True)
class Ping:
    """Heartbeat; the peer answers with a Pong echoing ``token``."""

    token: int


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to a Ping, echoing its ``token`` (so the sender can measure RTT)."""

    token: int


@dataclass(frozen=True, slots=True)
class Close:
    """Graceful close: the sender will send nothing after ``last_seq``."""

    last_seq: int


@dataclass(frozen=True, slots=True)
class CloseAck:
    """Answer to Close; ``ack`` is the answering side's cumulative receive ack."""

    ack: int


Frame = Union[Hello, Accept, Reject, Data, Ack, Ping, Pong, Close, CloseAck, Challenge, Proof]


def _frame(frame_type: FrameType, body: bytes) -> bytes:
    return b"".join(_frame_parts(frame_type, body))


def _frame_parts(frame_type: FrameType, body: bytes) -> tuple[bytes, bytes]:
    """The 12-byte header (with its CRC) and the body, left unjoined so that
    a sender can join many frames in one copy."""
    header = _HEADER.pack(MAGIC, PROTOCOL_VERSION, frame_type, len(body))
    crc = zlib.crc32(body, zlib.crc32(header))
    return header + _CRC.pack(crc), body


def _check_u64(value: int, name: str) -> None:
    if not 0 <= value <= MAX_SEQ:
        raise ValueError(f"{name} {value} is outside 0..2**64-1")


def _check_id(value: bytes, name: str) -> None:
    if len(value) != ID_SIZE:
        raise ValueError(f"{name} must be {ID_SIZE} bytes, got {len(value)}")


def encode_data(first_seq: int, ack: int, messages: list[bytes] | tuple[bytes, ...]) -> bytes:
    """Encode one DATA frame carrying ``messages`` (at least one)."""
    return b"".join(encode_data_parts(first_seq, ack, messages))


#: Messages at least this large are not copied into their frame: they go
#: out as buffers of their own (a writer can hand them to sendmsg as they are).
ZERO_COPY_SIZE = 16 * 1024

#: Smaller messages are joined into buffers of at most this size (the
#: first one also carries the DATA head), however large their frame: a sender
#: allocates and frees these per frame, and glibc maps a buffer above its
#: mmap threshold (128 KiB) fresh each time, or trims its heap after it,
#: either way paying a page fault per 4 KiB (a tenth of the compiled 1 KiB
#: sender's CPU with frames of 256 KiB joined whole).
JOIN_SIZE = 64 * 1024


def _prefixed(messages: list[bytes] | tuple[bytes, ...]) -> Iterator[bytes]:
    """Length prefix, message, length prefix, message, ...: the body of a
    run of small messages, produced by C iterators (no Python step per
    message)."""
    return chain.from_iterable(zip(map(_U32.pack, map(len, messages)), messages, strict=True))


def encode_data_parts(first_seq: int, ack: int, messages: list[bytes] | tuple[bytes, ...]) -> list[bytes]:
    """:func:`encode_data` as a list of buffers whose concatenation is the
    frame: small messages are joined (in pieces of at most about
    ``JOIN_SIZE``), large ones left as they are."""
    if not messages:
        raise ValueError("a DATA frame carries at least one message")
    _check_u64(first_seq, "first_seq")
    _check_u64(first_seq + len(messages) - 1, "last seq")
    _check_u64(ack, "ack")
    head = _DATA_HEAD.pack(first_seq, ack, len(messages))
    largest = max(map(len, messages))
    if largest < ZERO_COPY_SIZE:
        # Joined by C iterators: length prefix, message, length prefix, ...;
        # the head in the same join (one copy, not two).
        per_piece = max(1, JOIN_SIZE // (largest + _U32.size))
        if len(messages) <= per_piece:
            return list(_frame_parts(FrameType.DATA, b"".join(chain((head,), _prefixed(messages)))))
        pieces = [head]
        for start in range(0, len(messages), per_piece):
            pieces.append(b"".join(_prefixed(messages[start : start + per_piece])))
    else:
        pieces = [head]
        small: list[bytes] = []
        small_size = 0
        for message in messages:
            size = len(message)
            if size >= ZERO_COPY_SIZE:
                small.append(_U32.pack(size))
                pieces.append(b"".join(small))
                pieces.append(message)
                small, small_size = [], 0
                continue
            if small_size + _U32.size + size > JOIN_SIZE:
                pieces.append(b"".join(small))
                small, small_size = [], 0
            small += (_U32.pack(size), message)
            small_size += _U32.size + size
        if small:
            pieces.append(b"".join(small))
    header = _HEADER.pack(MAGIC, PROTOCOL_VERSION, FrameType.DATA, sum(map(len, pieces)))
    crc = zlib.crc32(header)
    for piece in pieces:
        crc = zlib.crc32(piece, crc)
    return [header + _CRC.pack(crc), *pieces]


def encode(frame: Frame) -> bytes:
    """Encode any frame to its wire bytes."""
    if isinstance(frame, Data):
        return encode_data(frame.first_seq, frame.ack, frame.messages)
    if isinstance(frame, (Hello, Accept)):
        _check_id(frame.session_id, "session_id")
        _check_id(frame.secret, "secret")
        _check_u64(frame.expect, "expect")
        flags = FLAG_RESUME if (frame.resume if isinstance(frame, Hello) else frame.resumed) else 0
        tail = b""
        if isinstance(frame, Hello) and frame.auth_nonce is not None:
            if len(frame.auth_nonce) != NONCE_SIZE:
                raise ValueError(f"auth_nonce must be {NONCE_SIZE} bytes")
            flags |= FLAG_AUTH
            tail += frame.auth_nonce
        if frame.max_message is not None:
            if not 1 <= frame.max_message <= MAX_MESSAGE_SIZE_LIMIT:
                raise ValueError(f"max_message {frame.max_message} is outside 1..{MAX_MESSAGE_SIZE_LIMIT}")
            flags |= FLAG_LIMITS
            tail += _U32.pack(frame.max_message)
        if frame.quiet:
            flags |= FLAG_QUIET
        body = _HELLO.pack(flags, frame.session_id, frame.secret, frame.expect) + tail
        return _frame(FrameType.HELLO if isinstance(frame, Hello) else FrameType.ACCEPT, body)
    if isinstance(frame, Challenge):
        if len(frame.nonce) != NONCE_SIZE or len(frame.proof) != MAC_SIZE:
            raise ValueError("CHALLENGE needs a 16-byte nonce and a 32-byte proof")
        return _frame(FrameType.CHALLENGE, _CHALLENGE.pack(frame.nonce, frame.proof))
    if isinstance(frame, Proof):
        if len(frame.proof) != MAC_SIZE:
            raise ValueError("PROOF needs a 32-byte proof")
        return _frame(FrameType.PROOF, frame.proof)
    if isinstance(frame, Reject):
        text = frame.text.encode("utf-8")[:MAX_REJECT_TEXT]
        # Cutting may split a character; drop the partial tail so it decodes.
        text = text.decode("utf-8", "ignore").encode("utf-8")
        return _frame(FrameType.REJECT, _REJECT_HEAD.pack(frame.reason) + text)
    if isinstance(frame, Ack):
        _check_u64(frame.ack, "ack")
        return _frame(FrameType.ACK, _U64.pack(frame.ack))
    if isinstance(frame, Ping):
        _check_u64(frame.token, "token")
        return _frame(FrameType.PING, _U64.pack(frame.token))
    if isinstance(frame, Pong):
        _check_u64(frame.token, "token")
        return _frame(FrameType.PONG, _U64.pack(frame.token))
    if isinstance(frame, Close):
        _check_u64(frame.last_seq, "last_seq")
        return _frame(FrameType.CLOSE, _U64.pack(frame.last_seq))
    if isinstance(frame, CloseAck):
        _check_u64(frame.ack, "ack")
        return _frame(FrameType.CLOSE_ACK, _U64.pack(frame.ack))
    raise TypeError(f"not a frame: {frame!r}")


def _decode_body(frame_type: int, body: memoryview) -> Frame:
    size = len(body)
    if frame_type == FrameType.DATA:
        return _decode_data(body)
    if frame_type in (FrameType.ACK, FrameType.PING, FrameType.PONG, FrameType.CLOSE, FrameType.CLOSE_ACK):
        if size != _U64.size:
            raise FrameError(f"{FrameType(frame_type).name} body must be 8 bytes, got {size}")
        (value,) = _U64.unpack(body)
        if frame_type == FrameType.ACK:
            return Ack(value)
        if frame_type == FrameType.PING:
            return Ping(value)
        if frame_type == FrameType.PONG:
            return Pong(value)
        if frame_type == FrameType.CLOSE:
            return Close(value)
        return CloseAck(value)
    if frame_type in (FrameType.HELLO, FrameType.ACCEPT):
        hello = frame_type == FrameType.HELLO
        flags = body[0] if size else 0
        allowed = FLAG_RESUME | FLAG_LIMITS | FLAG_QUIET | (FLAG_AUTH if hello else 0)
        if flags & ~allowed:
            raise FrameError(f"unknown flags 0x{flags:02x}")
        auth = bool(flags & FLAG_AUTH)
        limits = bool(flags & FLAG_LIMITS)
        expected = _HELLO.size + (NONCE_SIZE if auth else 0) + (_U32.size if limits else 0)
        if size != expected:
            raise FrameError(f"{FrameType(frame_type).name} body must be {expected} bytes, got {size}")
        flags, session_id, secret, expect = _HELLO.unpack_from(body)
        offset = _HELLO.size
        nonce = None
        if auth:
            nonce = bytes(body[offset : offset + NONCE_SIZE])
            offset += NONCE_SIZE
        max_message = None
        if limits:
            (max_message,) = _U32.unpack_from(body, offset)
            if not 1 <= max_message <= MAX_MESSAGE_SIZE_LIMIT:
                raise FrameError(f"announced max_message_size {max_message} is outside 1..{MAX_MESSAGE_SIZE_LIMIT}")
        quiet = bool(flags & FLAG_QUIET)
        if hello:
            return Hello(bool(flags & FLAG_RESUME), session_id, secret, expect, nonce, max_message, quiet)
        return Accept(bool(flags & FLAG_RESUME), session_id, secret, expect, max_message, quiet)
    if frame_type == FrameType.CHALLENGE:
        if size != _CHALLENGE.size:
            raise FrameError(f"CHALLENGE body must be {_CHALLENGE.size} bytes, got {size}")
        nonce, proof = _CHALLENGE.unpack(body)
        return Challenge(nonce, proof)
    if frame_type == FrameType.PROOF:
        if size != MAC_SIZE:
            raise FrameError(f"PROOF body must be {MAC_SIZE} bytes, got {size}")
        return Proof(bytes(body))
    if frame_type == FrameType.REJECT:
        if not 1 <= size <= 1 + MAX_REJECT_TEXT:
            raise FrameError(f"REJECT body of {size} bytes")
        try:
            reason = RejectReason(body[0])
        except ValueError:
            raise FrameError(f"unknown reject reason {body[0]}") from None
        try:
            text = bytes(body[1:]).decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError("REJECT text is not UTF-8") from None
        return Reject(reason, text)
    raise FrameError(f"unknown frame type {frame_type}")


def _decode_data(body: memoryview) -> Data:
    size = len(body)
    if size < _DATA_HEAD.size:
        raise FrameError(f"DATA body of {size} bytes is shorter than its header")
    first_seq, ack, count = _DATA_HEAD.unpack_from(body)
    if count == 0:
        raise FrameError("DATA frame with no messages")
    # Each message needs at least its 4-byte length: reject absurd counts
    # before looping over them.
    if count * _U32.size > size - _DATA_HEAD.size:
        raise FrameError(f"DATA count {count} does not fit in {size} bytes")
    if first_seq == 0 or first_seq + count - 1 > MAX_SEQ:
        raise FrameError(f"DATA sequence range {first_seq}+{count} is invalid")
    unpack = _U32.unpack_from
    offset = _DATA_HEAD.size
    messages = []
    for _ in range(count):
        if offset + 4 > size:
            raise FrameError("DATA frame truncated inside a length field")
        (length,) = unpack(body, offset)
        offset += 4
        end = offset + length
        if end > size:
            raise FrameError("DATA message runs past the end of its frame")
        messages.append(bytes(body[offset:end]))
        offset = end
    if offset != size:
        raise FrameError(f"{size - offset} stray bytes after the last DATA message")
    return Data(first_seq, ack, tuple(messages))


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes, then take the frames completed so far.

    However the byte stream is split, the same frames come out. The buffer
    never holds more than one incomplete frame (at most ``max_frame_size``
    plus a header) on top of what the last ``feed`` added.
    """

    def __init__(self, max_frame_size: int) -> None:
        if max_frame_size < 1:
            raise ValueError("max_frame_size must be positive")
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._needed: int | None = None  # body length of the frame in progress
        self._failed: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add received bytes; return every frame they complete, in order.

        Raises FrameError on malformed input; after that the decoder stays
        failed (every later call raises the same error), because the byte
        stream can't be resynchronised.
        """
        if self._failed is not None:
            raise self._failed
        try:
            if self._buffer:
                buffer = self._buffer
                buffer += data
                frames, used = self._drain(buffer)
                if used:
                    del buffer[:used]
                return frames
            # Nothing held back: decode straight from the caller's bytes and
            # keep only an incomplete tail (whole frames are never copied here).
            frames, used = self._drain(data)
            if used < len(data):
                self._buffer += data[used:]
            return frames
        except FrameError as exc:
            self._failed = exc
            # A new buffer: the traceback may still hold views of the old one.
            self._buffer = bytearray()
            raise

    def feed_buffer(self, buffer: ReceiveBuffer) -> list[Frame]:
        """:meth:`feed` for bytes a reader received into ``buffer``: every
        whole frame is decoded where it lies, and the incomplete tail stays
        in ``buffer`` (which learns how large that frame is, so the next
        read can complete it in place). Nothing is copied but each
        message, once, into its own bytes."""
        if self._failed is not None:
            raise self._failed
        pending = buffer.pending()
        if self._buffer:
            # Bytes fed earlier (a handshake's leftovers) come first: these
            # join them, and the buffer is free again.
            frames = self.feed(pending)
            buffer.consumed(len(pending), HEADER_SIZE)
            return frames
        try:
            frames, used = self._drain(pending)
        except FrameError as exc:
            self._failed = exc
            raise
        wanted = HEADER_SIZE
        if len(pending) - used >= _HEADER.size:
            # The next frame's header is here (and was checked by _drain):
            # its whole size is known.
            wanted += _HEADER.unpack_from(pending, used)[3]
        buffer.consumed(used, wanted)
        return frames

    def _drain(self, source: bytes | bytearray | memoryview) -> tuple[list[Frame], int]:
        """Every whole frame at the start of ``source``, and how many bytes they took."""
        frames: list[Frame] = []
        offset = 0
        size = len(source)
        # Bodies are read through a view: the CRC runs over it in place and
        # each message is copied out once, straight from it.
        with memoryview(source) as view:
            while True:
                available = size - offset
                # Magic, version and length are judged as soon as their bytes arrive
                # (the slower check only runs when something is off or missing).
                if available < 3 or view[offset : offset + 3] != _PREFIX:
                    self._check_prefix(bytes(view[offset : offset + 3]))
                if available < _HEADER.size:
                    break
                _, _, frame_type, length = _HEADER.unpack_from(view, offset)
                if length > self.max_frame_size:
                    raise FrameTooLarge(length, self.max_frame_size)
                end = offset + HEADER_SIZE + length
                if end > size:
                    break
                (crc,) = _CRC.unpack_from(view, offset + _HEADER.size)
                body = view[offset + HEADER_SIZE : end]
                actual = zlib.crc32(body, zlib.crc32(view[offset : offset + _HEADER.size]))
                if actual != crc:
                    raise CorruptFrame(f"checksum mismatch (got {crc:08x}, computed {actual:08x})")
                frames.append(_decode_body(frame_type, body))
                body.release()
                offset = end
        return frames, offset

    @staticmethod
    def _check_prefix(prefix: bytes) -> None:
        n = len(prefix)
        if (n and prefix[0] != MAGIC[0]) or (n > 1 and prefix[1] != MAGIC[1]):
            raise CorruptFrame(f"bad magic {bytes(prefix[:2])!r}; not a reliable_tcp peer")
        if n > 2 and prefix[2] != PROTOCOL_VERSION:
            raise UnsupportedVersion(prefix[2])


class ReceiveBuffer:
    """A reader's reusable receive buffer that frames are decoded from in place.

    A reader receives into :meth:`space` (``socket.recv_into``), reports the
    count with :meth:`filled`, hands the buffer to
    :meth:`FrameDecoder.feed_buffer`, then calls :meth:`settle` before its
    next read. A message's bytes are thus copied twice in all: by the
    kernel into this buffer, and once out of it into the message's own
    bytes object. An incomplete frame stays where it is; it moves only when
    the room behind it can't take the rest of it (to the front, or into a
    larger buffer when the frame is larger than the buffer).

    Size: it starts at ``initial`` bytes (idle sessions are most sessions)
    and doubles whenever a read fills all its free room, up to ``usual``.
    A frame larger than that gets a buffer of its own size (at most the
    decoder's ``max_frame_size`` plus a header), given back once the frame
    is decoded.
    """

    def __init__(self, initial: int = 16 * 1024, usual: int = 256 * 1024) -> None:
        if not 0 < initial <= usual:
            raise ValueError("ReceiveBuffer needs 0 < initial <= usual")
        self._data = bytearray(initial)
        self._usual = usual
        self._start = 0  # the first byte not yet decoded
        self._end = 0  # the end of what was received
        self._wanted = HEADER_SIZE  # the whole size of the frame at _start
        self._read_filled_room = False
        self._taken = False  # a decoder took from it since the last read

    def __len__(self) -> int:
        """Bytes received and not yet decoded."""
        return self._end - self._start

    @property
    def capacity(self) -> int:
        """The buffer's size now."""
        return len(self._data)

    def space(self) -> memoryview:
        """Where the next read goes: all the room after what is held (at
        least one byte). Release it (or let it go) before :meth:`settle`."""
        return memoryview(self._data)[self._end :]

    def filled(self, count: int) -> None:
        """``count`` bytes were received into :meth:`space`."""
        if not 0 <= count <= len(self._data) - self._end:
            raise ValueError(f"filled {count} bytes of {len(self._data) - self._end} free")
        self._end += count
        self._read_filled_room = self._end == len(self._data)
        self._taken = False

    def pending(self) -> memoryview:
        """What was received and not yet decoded."""
        return memoryview(self._data)[self._start : self._end]

    def consumed(self, count: int, wanted: int) -> None:
        """A decoder took ``count`` bytes of :meth:`pending`; the frame that
        begins after them is ``wanted`` bytes long in all (header included),
        or at least a header's size when its header is not all here."""
        if not 0 <= count <= self._end - self._start:
            raise ValueError(f"consumed {count} of {self._end - self._start} bytes")
        self._start += count
        self._wanted = wanted
        self._taken = True

    def settle(self) -> None:
        """Make room for the next read. Bytes no decoder took since the last
        read are dropped (the connection no longer carries the session)."""
        if not self._taken:
            self._start = self._end = 0
            self._wanted = HEADER_SIZE
        held = self._end - self._start
        size = len(self._data)
        grown = min(2 * size, self._usual) if self._read_filled_room and size < self._usual else size
        if held == 0:
            self._start = self._end = 0
            if size > self._usual:
                self._data = bytearray(self._usual)  # a large frame's room goes back
            elif grown > size:
                self._data = bytearray(grown)
            return
        needed = max(self._wanted, held + 1)
        if size - self._start >= needed:
            return  # the rest of this frame fits behind it: read on in place
        size = max(needed, grown if size <= self._usual else self._usual)
        if size == len(self._data):
            # Same size: move the incomplete frame to the front (memoryview
            # assignment is a memmove, safe for overlapping ranges).
            with memoryview(self._data) as view:
                view[:held] = view[self._start : self._end]
        else:
            data = bytearray(size)
            data[:held] = memoryview(self._data)[self._start : self._end]
            self._data = data
        self._start, self._end = 0, held
