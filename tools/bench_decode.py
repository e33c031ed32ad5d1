#!/usr/bin/env python3
"""The receive path's decoding, with and without the in-place buffer, in one run.

    python tools/bench_decode.py [--sizes 64,1024,65536] [--megabytes 40]

Decodes the same stream of DATA frames two ways, with the same read sizes
(about 127 KiB, so reads split frames as loopback reads do):
``FrameDecoder.feed`` on each read (an incomplete frame is copied into the
decoder's own backlog, and copied again when the next read joins it), and
``FrameDecoder.feed_buffer`` on a ``ReceiveBuffer`` (frames decoded where the
read put them; what the threaded reader does since issue 26). A copy into
the read buffer stands in for ``recv_into``. Prints microseconds per
message and the ratio. Run it under a compiled build's interpreter (with
``--installed``) to measure that build.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if "--installed" not in sys.argv:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from reliable_tcp import COMPILED  # noqa: E402
from reliable_tcp.core import frames  # noqa: E402

READ = 2 * 65536 - 1234


def _stream(size: int) -> tuple[bytes, int]:
    """200 DATA frames of messages of ``size`` bytes (up to 16 KiB per frame, as the sender batches)."""
    per_frame = max(1, min(100, 16384 // (size + 4)))
    messages = [bytes(size)] * per_frame
    return b"".join(frames.encode_data(1 + i * per_frame, 0, messages) for i in range(200)), 200 * per_frame


def _with_backlog(stream: bytes, rounds: int) -> int:
    decoder = frames.FrameDecoder(1 << 24)
    read_buffer = bytearray(256 * 1024)
    source = memoryview(stream)
    decoded = 0
    for _ in range(rounds):
        offset = 0
        while offset < len(stream):
            count = min(READ, len(stream) - offset)
            read_buffer[:count] = source[offset : offset + count]
            decoded += len(decoder.feed(memoryview(read_buffer)[:count]))
            offset += count
    return decoded


def _in_place(stream: bytes, rounds: int) -> int:
    decoder = frames.FrameDecoder(1 << 24)
    buffer = frames.ReceiveBuffer(16 * 1024, 256 * 1024)
    source = memoryview(stream)
    decoded = 0
    for _ in range(rounds):
        offset = 0
        while offset < len(stream):
            with buffer.space() as room:
                count = min(READ, len(room), len(stream) - offset)
                room[:count] = source[offset : offset + count]
            buffer.filled(count)
            offset += count
            decoded += len(decoder.feed_buffer(buffer))
            buffer.settle()
    return decoded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,1024,65536")
    parser.add_argument("--megabytes", type=float, default=40.0, help="bytes decoded per measurement")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--installed", action="store_true", help="measure the installed reliable_tcp, not the checkout's")
    args = parser.parse_args()
    print(f"decoding, the {'compiled' if COMPILED else 'pure'} build; best of {args.repeat}")
    print(f"{'size':>7}  {'feed (backlog)':>16}  {'feed_buffer (in place)':>22}  {'ratio':>6}")
    for size in (int(part) for part in args.sizes.split(",")):
        stream, count = _stream(size)
        rounds = max(1, int(args.megabytes * 1e6) // len(stream))
        best = {}
        for name, decode in (("backlog", _with_backlog), ("in place", _in_place)):
            times = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                frames_decoded = decode(stream, rounds)
                times.append(time.perf_counter() - started)
                assert frames_decoded == 200 * rounds
            best[name] = min(times) / (count * rounds) * 1e6
        print(f"{size:>7}  {best['backlog']:>13.3f} us  {best['in place']:>19.3f} us  {best['in place'] / best['backlog']:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
