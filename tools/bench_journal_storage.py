#!/usr/bin/env python3
"""The journal's storage choice, by measurement: append-only log vs sqlite3 (WAL).

    python tools/bench_journal_storage.py

Records of 64 B and 1 KiB, committed (made durable) one at a time and in
batches of 256, each way: records per second. Both fsync on every commit
(sqlite3 with synchronous=FULL).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from reliable_tcp.durable.journal import Journal  # noqa: E402


def log_rate(size: int, batch: int, seconds: float = 1.5) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(os.path.join(tmp, "j"))
        payloads = [b"x" * size] * batch
        seq, start = 1, time.perf_counter()
        while time.perf_counter() - start < seconds:
            journal.sync(journal.record_sent(seq, payloads))
            seq += batch
        rate = (seq - 1) / (time.perf_counter() - start)
        journal.close()
        return rate


def sqlite_rate(size: int, batch: int, seconds: float = 1.5) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(os.path.join(tmp, "j.db"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE sent (seq INTEGER PRIMARY KEY, payload BLOB)")
        payload = b"x" * size
        seq, start = 1, time.perf_counter()
        while time.perf_counter() - start < seconds:
            db.execute("BEGIN")
            db.executemany("INSERT INTO sent VALUES (?, ?)", [(seq + i, payload) for i in range(batch)])
            db.execute("COMMIT")
            seq += batch
        rate = (seq - 1) / (time.perf_counter() - start)
        db.close()
        return rate


def main() -> int:
    print(f"{'size':>6} {'batch':>6} {'log rec/s':>12} {'sqlite WAL rec/s':>17} {'log / sqlite':>13}")
    for size in (64, 1024):
        for batch in (1, 256):
            log, lite = log_rate(size, batch), sqlite_rate(size, batch)
            print(f"{size:>6} {batch:>6} {log:>12,.0f} {lite:>17,.0f} {log / lite:>13.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
