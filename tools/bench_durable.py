#!/usr/bin/env python3
"""Durable vs in-memory send throughput over loopback (one process).

    python tools/bench_durable.py

For 64 B and 1 KiB messages: messages/s with ``send`` (one fsync per call
with a journal) and ``send_many`` in batches of 256 (one fsync per batch),
with and without ``journal=``. The journal lives in a temporary directory
on the same disk as /tmp.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import reliable_tcp  # noqa: E402


def run(size: int, batch: int, durable: bool, seconds: float = 2.0) -> float:
    with tempfile.TemporaryDirectory() as tmp, reliable_tcp.listen(("127.0.0.1", 0)) as listener:
        journal = os.path.join(tmp, "j") if durable else None
        client = reliable_tcp.connect(listener.address, journal=journal)
        server = listener.accept(timeout=10)
        got = [0]

        def drain() -> None:
            try:
                while True:
                    got[0] += len(server.recv_many(4096))
            except reliable_tcp.ReliableTCPError:
                return

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        payload = b"x" * size
        messages = [payload] * batch
        sent = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            if batch == 1:
                client.send(payload)
            else:
                client.send_many(messages)
            sent += batch
        elapsed = time.perf_counter() - start
        client.close(timeout=60)
        reader.join(10)
        server.close()
        return sent / elapsed


def main() -> int:
    print(f"{'size':>6} {'call':<16} {'in memory msg/s':>16} {'durable msg/s':>14} {'ratio':>6}")
    for size in (64, 1024):
        for batch, name in ((1, "send"), (256, "send_many(256)")):
            plain = run(size, batch, False)
            durable = run(size, batch, True)
            print(f"{size:>6} {name:<16} {plain:>16,.0f} {durable:>14,.0f} {durable / plain:>6.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
