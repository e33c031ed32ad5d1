#!/usr/bin/env python3
"""Measure outage detection and resume times over loopback with the fault proxy.

    python tools/measure_recovery.py --heartbeat 3 --heartbeat 0.5 --repeat 3

For each heartbeat interval and fault kind (blackhole, reset, close) it
prints: time from the fault to the client's "disconnected" verdict, and
time from the link coming back to "resumed". Used for docs/reliability.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import reliable_tcp  # noqa: E402
from reliable_tcp.testing import FaultProxy  # noqa: E402


def measure(heartbeat: float, kind: str, outage: float) -> tuple[float, float]:
    marks: dict[str, float] = {}
    changed = threading.Condition()

    def on_event(event: reliable_tcp.ChannelEvent) -> None:
        with changed:
            marks.setdefault(event.kind, time.monotonic())
            changed.notify_all()

    options = {"heartbeat_interval": heartbeat}
    with reliable_tcp.listen(("127.0.0.1", 0), **options) as listener, FaultProxy(listener.address) as proxy:
        client = reliable_tcp.connect(proxy.address, on_event=on_event, **options)
        server = listener.accept(timeout=10)
        client.send(b"warm-up")
        server.recv(timeout=10)
        start = time.monotonic()
        if kind == "blackhole":
            proxy.blackhole()
            with changed:
                changed.wait_for(lambda: "disconnected" in marks, 10 * heartbeat + 5)
            time.sleep(max(0.0, start + outage - time.monotonic()))
            back = time.monotonic()
            proxy.heal()
        elif kind == "reset":
            back = start
            proxy.reset()
        else:
            back = start
            proxy.close_connections()
        with changed:
            changed.wait_for(lambda: "resumed" in marks, 30)
        client.send(b"after")
        assert server.recv(timeout=10) == b"after"
        client.close()
        server.close()
    return marks["disconnected"] - start, marks["resumed"] - back


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heartbeat", type=float, action="append", help="heartbeat interval(s) to try")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kinds", default="blackhole,reset,close")
    args = parser.parse_args()
    for heartbeat in args.heartbeat or [3.0, 0.5]:
        for kind in args.kinds.split(","):
            outage = 3 * heartbeat + 1.0  # a blackhole outlasts dead_after
            results = [measure(heartbeat, kind, outage) for _ in range(args.repeat)]
            detect = [d for d, _ in results]
            resume = [r for _, r in results]
            print(
                f"heartbeat {heartbeat:>4} s  {kind:<9}  detection median {statistics.median(detect):6.3f} s "
                f"(min {min(detect):.3f}, max {max(detect):.3f})  resume median {statistics.median(resume):6.3f} s "
                f"(min {min(resume):.3f}, max {max(resume):.3f})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
