"""Frame codec: round trips, split invariance, limits, corruption."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reliable_tcp.core import frames as f
from reliable_tcp.exceptions import FrameError, FrameTooLarge, UnsupportedVersion

u64 = st.integers(0, f.MAX_SEQ)
ids = st.binary(min_size=f.ID_SIZE, max_size=f.ID_SIZE)


@st.composite
def data_frames(draw: st.DrawFn) -> f.Data:
    messages = tuple(draw(st.lists(st.binary(max_size=64), min_size=1, max_size=8)))
    first = draw(st.integers(1, f.MAX_SEQ - len(messages) + 1))
    return f.Data(first, draw(u64), messages)


nonces = st.binary(min_size=f.NONCE_SIZE, max_size=f.NONCE_SIZE)
macs = st.binary(min_size=f.MAC_SIZE, max_size=f.MAC_SIZE)

limits = st.none() | st.integers(1, f.MAX_MESSAGE_SIZE_LIMIT)

any_frame = st.one_of(
    st.builds(f.Hello, st.booleans(), ids, ids, u64, st.none() | nonces, limits),
    st.builds(f.Challenge, nonces, macs),
    st.builds(f.Proof, macs),
    st.builds(f.Accept, st.booleans(), ids, ids, u64, limits),
    st.builds(f.Reject, st.sampled_from(f.RejectReason), st.text(max_size=40)),
    data_frames(),
    st.builds(f.Ack, u64),
    st.builds(f.Ping, u64),
    st.builds(f.Pong, u64),
    st.builds(f.Close, u64),
    st.builds(f.CloseAck, u64),
)

LIMIT = 4096


def decode_all(data: bytes, chunks: list[int] | None = None) -> list[f.Frame]:
    decoder = f.FrameDecoder(LIMIT)
    if chunks is None:
        return decoder.feed(data)
    out: list[f.Frame] = []
    pos = 0
    for size in chunks:
        out += decoder.feed(data[pos : pos + size])
        pos += size
    out += decoder.feed(data[pos:])
    assert decoder.buffered == 0
    return out


@given(st.lists(any_frame, max_size=6))
def test_round_trip_of_every_frame_type(frames: list[f.Frame]) -> None:
    assert decode_all(b"".join(map(f.encode, frames))) == frames


@given(st.lists(any_frame, min_size=1, max_size=5), st.data())
def test_same_frames_however_the_stream_is_split(frames: list[f.Frame], data: st.DataObject) -> None:
    wire = b"".join(map(f.encode, frames))
    assert decode_all(wire, [1] * len(wire)) == frames
    chunks = data.draw(st.lists(st.integers(0, len(wire)), max_size=20))
    assert decode_all(wire, chunks) == frames


@given(st.binary(max_size=300))
def test_any_bytes_give_frames_or_frame_error(blob: bytes) -> None:
    decoder = f.FrameDecoder(LIMIT)
    try:
        decoder.feed(blob)
    except FrameError:
        with pytest.raises(FrameError):
            decoder.feed(b"more")  # a failed decoder stays failed


@given(st.lists(any_frame, min_size=1, max_size=3), st.binary(max_size=200))
def test_valid_prefix_then_garbage(frames: list[f.Frame], garbage: bytes) -> None:
    decoder = f.FrameDecoder(LIMIT)
    assert decoder.feed(b"".join(map(f.encode, frames))) == frames
    try:
        decoder.feed(garbage)
    except FrameError:
        pass


@given(any_frame, st.data())
def test_a_flipped_bit_anywhere_is_detected(frame: f.Frame, data: st.DataObject) -> None:
    wire = bytearray(f.encode(frame))
    position = data.draw(st.integers(0, len(wire) * 8 - 1))
    wire[position // 8] ^= 1 << (position % 8)
    decoder = f.FrameDecoder(2**32)
    try:
        decoded = decoder.feed(bytes(wire))
    except FrameError:
        return
    # A flipped length bit can leave the decoder waiting for more bytes,
    # but it must never hand out a frame.
    assert decoded == []


def test_oversized_length_is_rejected_before_the_body_arrives() -> None:
    header = f.MAGIC + bytes([f.PROTOCOL_VERSION, f.FrameType.DATA]) + (2**31).to_bytes(4, "big")
    decoder = f.FrameDecoder(LIMIT)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(header + b"\0\0\0\0")
    assert info.value.length == 2**31
    assert decoder.buffered == 0


def test_wrong_magic_and_version_are_reported_at_once() -> None:
    with pytest.raises(FrameError, match="magic"):
        f.FrameDecoder(LIMIT).feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(FrameError, match="magic"):
        f.FrameDecoder(LIMIT).feed(b"\x16\x03\x01")  # a TLS ClientHello
    with pytest.raises(UnsupportedVersion) as info:
        f.FrameDecoder(LIMIT).feed(b"RT\x09")
    assert info.value.version == 9


def _frame(frame_type: int, body: bytes) -> bytes:
    header = f.MAGIC + bytes([f.PROTOCOL_VERSION, frame_type]) + len(body).to_bytes(4, "big")
    return header + zlib.crc32(body, zlib.crc32(header)).to_bytes(4, "big") + body


@pytest.mark.parametrize(
    ("frame_type", "body", "match"),
    [
        (99, b"", "unknown frame type"),
        (f.FrameType.ACK, b"\0" * 7, "8 bytes"),
        (f.FrameType.HELLO, b"\0" * 10, "HELLO body"),
        (f.FrameType.HELLO, b"\x80" + b"\0" * 40, "flags"),
        (f.FrameType.REJECT, b"", "REJECT body"),
        (f.FrameType.REJECT, b"\x63", "reason"),
        (f.FrameType.REJECT, b"\x01\xff", "UTF-8"),
        (f.FrameType.DATA, b"\0" * 5, "shorter"),
        (f.FrameType.DATA, (1).to_bytes(8, "big") + bytes(8) + bytes(4), "no messages"),
        (f.FrameType.DATA, bytes(8) + bytes(8) + (1).to_bytes(4, "big") + bytes(4), "sequence"),
        (f.FrameType.DATA, (1).to_bytes(8, "big") + bytes(8) + (1000).to_bytes(4, "big") + bytes(8), "count"),
        (f.FrameType.DATA, (1).to_bytes(8, "big") + bytes(8) + (1).to_bytes(4, "big") + (9).to_bytes(4, "big"), "past the end"),
        (f.FrameType.DATA, (1).to_bytes(8, "big") + bytes(8) + (1).to_bytes(4, "big") + bytes(4) + b"x", "stray"),
    ],
)
def test_malformed_bodies_raise_frame_error(frame_type: int, body: bytes, match: str) -> None:
    with pytest.raises(FrameError, match=match):
        f.FrameDecoder(LIMIT).feed(_frame(frame_type, body))


def test_bad_checksum() -> None:
    wire = bytearray(f.encode(f.Ack(5)))
    wire[9] ^= 0xFF
    with pytest.raises(FrameError, match="checksum"):
        f.FrameDecoder(LIMIT).feed(bytes(wire))


def test_data_run_of_many_messages_has_one_header() -> None:
    messages = [bytes([i]) * 3 for i in range(100)]
    wire = f.encode_data(7, 3, messages)
    assert len(wire) == f.DATA_OVERHEAD + 100 * (f.DATA_PER_MESSAGE_OVERHEAD + 3)
    assert f.FrameDecoder(LIMIT).feed(wire) == [f.Data(7, 3, tuple(messages))]


def test_encoder_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError):
        f.encode(f.Ack(-1))
    with pytest.raises(ValueError):
        f.encode(f.Hello(False, b"short", bytes(16), 1))
    with pytest.raises(ValueError):
        f.encode_data(1, 0, [])
    with pytest.raises(ValueError):
        f.encode_data(f.MAX_SEQ, 0, [b"a", b"b"])
    with pytest.raises(TypeError):
        f.encode("not a frame")  # type: ignore[arg-type]


def test_reject_text_is_cut_at_a_character_boundary() -> None:
    wire = f.encode(f.Reject(f.RejectReason.PROTOCOL_ERROR, "é" * 400))
    (frame,) = f.FrameDecoder(LIMIT).feed(wire)
    assert isinstance(frame, f.Reject)
    assert frame.text == "é" * 256


def test_every_prefix_of_a_valid_frame_waits_without_error() -> None:
    wire = f.encode(f.Hello(True, bytes(range(16)), bytes(16), 9))
    for cut in range(len(wire)):
        decoder = f.FrameDecoder(LIMIT)
        assert decoder.feed(wire[:cut]) == []
        assert decoder.feed(wire[cut:]) == [f.Hello(True, bytes(range(16)), bytes(16), 9)]


@pytest.mark.parametrize(
    ("reason", "text", "seconds"),
    [
        (f.RejectReason.SERVER_BUSY, "retry-after-ms=2500; the server is restarting", 2.5),
        (f.RejectReason.SERVER_BUSY, "retry-after-ms=0", 0.0),
        (f.RejectReason.SERVER_BUSY, "retry-after-ms=99999999999", None),  # eleven digits: not a hint
        (f.RejectReason.SERVER_BUSY, "retry-after-ms=9999999999", f.MAX_RETRY_AFTER_MS / 1000),  # capped at an hour
        (f.RejectReason.SERVER_BUSY, "retry-after-ms=12x", None),
        (f.RejectReason.SERVER_BUSY, "retry-after-ms=12;no space", None),
        (f.RejectReason.SERVER_BUSY, " retry-after-ms=12", None),
        (f.RejectReason.SERVER_BUSY, "the server is busy", None),
        (f.RejectReason.HANDSHAKE_TIMEOUT, "retry-after-ms=2500", None),  # only SERVER_BUSY carries one
        (f.RejectReason.NOT_HERE, "retry-after-ms=2500", None),
    ],
)
def test_the_retry_hint_is_read_only_where_and_as_protocol_md_says(reason: f.RejectReason, text: str, seconds: float | None) -> None:
    assert f.retry_after(reason, text) == seconds


@given(st.floats(min_value=0, max_value=10_000, allow_nan=False), st.text(max_size=100))
def test_a_written_hint_reads_back_and_the_text_survives(seconds: float, text: str) -> None:
    written = f.with_retry_after(seconds, text)
    assert f.retry_after(f.RejectReason.SERVER_BUSY, written) == min(round(seconds * 1000), f.MAX_RETRY_AFTER_MS) / 1000
    assert written.endswith(text)
    [decoded] = decode_all(f.encode(f.Reject(f.RejectReason.SERVER_BUSY, written)))
    assert isinstance(decoded, f.Reject)
    assert f.retry_after(decoded.reason, decoded.text) == f.retry_after(f.RejectReason.SERVER_BUSY, written)


# ------------------------------------------------- decoding in place (ReceiveBuffer)


def decode_in_place(
    wire: bytes, reads: list[int], *, decoder: f.FrameDecoder | None = None, initial: int = 64, usual: int = 256
) -> tuple[list[f.Frame], int]:
    """What a reader does: receive into the buffer in reads of at most the
    given sizes (each also bounded by the room the buffer offers), decode in
    place, settle. Returns the frames and the largest capacity seen."""
    decoder = decoder or f.FrameDecoder(LIMIT)
    buffer = f.ReceiveBuffer(initial, usual)
    frames: list[f.Frame] = []
    pos = 0
    largest = buffer.capacity
    sizes = iter(reads)
    while pos < len(wire):
        with buffer.space() as room:
            count = min(len(room), len(wire) - pos, max(1, next(sizes, len(wire))))
            room[:count] = wire[pos : pos + count]  # stands in for recv_into
        pos += count
        buffer.filled(count)
        frames += decoder.feed_buffer(buffer)
        buffer.settle()
        largest = max(largest, buffer.capacity)
    assert len(buffer) == 0
    return frames, largest


@given(st.lists(any_frame, min_size=1, max_size=6), st.data())
def test_decoding_in_place_gives_the_same_frames_however_reads_split_them(frames: list[f.Frame], data: st.DataObject) -> None:
    wire = b"".join(map(f.encode, frames))
    reads = data.draw(st.lists(st.integers(1, len(wire)), max_size=30))
    decoded, largest = decode_in_place(wire, reads)
    assert decoded == frames
    # Bounded: the usual size, or one whole frame when a frame is larger.
    assert largest <= max(256, max(len(f.encode(frame)) for frame in frames))


def test_a_frame_larger_than_the_buffer_gets_room_of_its_own_which_goes_back_after_it() -> None:
    big = f.Data(1, 0, (bytes(range(256)) * 12,))  # a 3 KiB message; the buffer's usual size is 256 B
    small = f.Ack(7)
    wire = f.encode(big) + f.encode(small)
    decoder = f.FrameDecoder(LIMIT)
    buffer = f.ReceiveBuffer(64, 256)
    decoded: list[f.Frame] = []
    pos = 0
    capacities = []
    while pos < len(wire):
        with buffer.space() as room:
            count = min(len(room), len(wire) - pos)
            room[:count] = wire[pos : pos + count]
        pos += count
        buffer.filled(count)
        decoded += decoder.feed_buffer(buffer)
        buffer.settle()
        capacities.append(buffer.capacity)
    assert decoded == [big, small]
    assert max(capacities) == len(f.encode(big))  # exactly the frame, not a doubling past it
    assert capacities[-1] <= 256  # given back once the frame was decoded


def test_bytes_fed_before_the_buffer_is_used_come_first() -> None:
    """A handshake's leftovers go to feed(); the reader's first buffer joins them."""
    wire = f.encode(f.Ping(1)) + f.encode(f.Data(1, 0, (b"hello",))) + f.encode(f.Pong(2))
    decoder = f.FrameDecoder(LIMIT)
    assert decoder.feed(wire[:5]) == []
    frames, _ = decode_in_place(wire[5:], [7, 100], decoder=decoder)
    assert frames == [f.Ping(1), f.Data(1, 0, (b"hello",)), f.Pong(2)]
    assert decoder.buffered == 0


def test_bytes_no_decoder_took_are_dropped_when_the_buffer_settles() -> None:
    """The session was not on this connection any more: what it did not
    take must not pile up in the reader's buffer."""
    buffer = f.ReceiveBuffer(64, 256)
    for _ in range(10):
        with buffer.space() as room:
            room[:40] = bytes(40)
        buffer.filled(40)
        buffer.settle()
        assert len(buffer) == 0


def test_a_damaged_stream_fails_the_decoder_from_the_buffer_too() -> None:
    wire = bytearray(f.encode(f.Ping(1)))
    wire[-1] ^= 1
    decoder = f.FrameDecoder(LIMIT)
    buffer = f.ReceiveBuffer(64, 256)
    with buffer.space() as room:
        room[: len(wire)] = wire
    buffer.filled(len(wire))
    with pytest.raises(FrameError, match="checksum"):
        decoder.feed_buffer(buffer)
    with pytest.raises(FrameError):
        decoder.feed(f.encode(f.Ping(2)))  # and stays failed


def test_a_too_large_frame_is_refused_before_the_buffer_grows_for_it() -> None:
    header = f.encode(f.Ping(1))[:12]
    oversized = header[:4] + (LIMIT + 1).to_bytes(4, "big") + header[8:]
    decoder = f.FrameDecoder(LIMIT)
    buffer = f.ReceiveBuffer(64, 256)
    with buffer.space() as room:
        room[:12] = oversized
    buffer.filled(12)
    with pytest.raises(FrameTooLarge):
        decoder.feed_buffer(buffer)
    assert buffer.capacity == 64


def test_the_buffer_refuses_counts_it_did_not_offer() -> None:
    buffer = f.ReceiveBuffer(64, 256)
    with pytest.raises(ValueError):
        buffer.filled(65)
    buffer.filled(10)
    with pytest.raises(ValueError):
        buffer.consumed(11, f.HEADER_SIZE)
    with pytest.raises(ValueError):
        f.ReceiveBuffer(512, 256)


@given(
    st.lists(st.sampled_from([0, 1, 200, 1024, 5000, f.ZERO_COPY_SIZE - 1, f.ZERO_COPY_SIZE, 70_000]), min_size=1, max_size=300),
    u64,
)
def test_a_data_frame_in_parts_is_the_frame_and_joins_no_buffer_beyond_join_size(sizes: list[int], ack: int) -> None:
    messages = [bytes([n % 251]) * size for n, size in enumerate(sizes)]
    parts = f.encode_data_parts(7, ack, messages)
    assert f.FrameDecoder(1 << 30).feed(b"".join(parts)) == [f.Data(7, ack, tuple(messages))]
    header, *body = parts
    assert len(header) == f.HEADER_SIZE
    for part in body:
        # A large message goes out as the caller's own object; every joined
        # buffer stays small enough to come from the allocator's heap.
        if len(part) >= f.ZERO_COPY_SIZE and any(part is message for message in messages):
            continue
        assert len(part) <= f.JOIN_SIZE + 32
