#!/usr/bin/env python3
"""What idle sessions cost the listening process: threads, RSS and CPU.

    python tools/bench_sessions.py --sessions 1000 3000 [--idle 10] [--heartbeat quiet classic] [--json out.json]

For each count, a listener process accepts that many sessions from a client
process (each side its own process), lets them idle (heartbeats only) for
``--idle`` seconds, and reports its thread count, resident memory and the
CPU it used per second of idling, with the quiet heartbeat (protocol.md
6.1, the default) and the classic one (the clients ask with
``quiet_heartbeat=False``), one after the other in the same run. Run it with
PYTHONPATH pointing at another checkout to compare two versions on the same
machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import reliable_tcp  # noqa: E402


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server(port_queue: Any, result_queue: Any, sessions: int, idle: float) -> None:
    with reliable_tcp.listen(("127.0.0.1", 0), max_sessions=sessions + 10, backlog=4096) as listener:
        port_queue.put(listener.address[1])
        channels = [listener.accept(timeout=300) for _ in range(sessions)]
        time.sleep(2.0)  # let the accept burst settle before measuring
        before = _cpu()
        time.sleep(idle)  # idling is what is measured
        cpu = (_cpu() - before) / idle
        result_queue.put({"threads": threading.active_count(), "rss_mb": round(_rss_mb(), 1),
                          "idle_cpu_percent": round(100 * cpu, 1), "sessions": len(channels)})
        port_queue.get(timeout=600)  # the client is done measuring too
        started = time.monotonic()
        for channel in channels:
            channel.abort()
        result_queue.put({"abort_all_s": round(time.monotonic() - started, 2)})


def client(port: int, go: Any, done: Any, sessions: int, quiet: bool) -> None:
    options = {"quiet_heartbeat": False} if not quiet else {}  # the default asks for it; an older checkout lacks the option
    channels = [reliable_tcp.connect(("127.0.0.1", port), timeout=300, **options) for _ in range(sessions)]
    go.get(timeout=600)
    started = time.monotonic()
    closers = [threading.Thread(target=channel.close, kwargs={"timeout": 30}) for channel in channels]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join()
    left = [t.name for t in threading.enumerate() if t.name.startswith("rtcp-") and "timers" not in t.name]
    done.put({"close_all_s": round(time.monotonic() - started, 2), "threads_left_after_close": len(left)})


def measure(sessions: int, idle: float, quiet: bool) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    port_queue, result_queue, go, client_result = context.Queue(), context.Queue(), context.Queue(), context.Queue()
    srv = context.Process(target=server, args=(port_queue, result_queue, sessions, idle))
    srv.start()
    port = port_queue.get(timeout=60)
    cli = context.Process(target=client, args=(port, go, client_result, sessions, quiet))
    cli.start()
    result = result_queue.get(timeout=900)
    go.put("close")  # every client channel closes at once, each from its own thread
    result.update(client_result.get(timeout=300))
    cli.join(120)
    port_queue.put("done")
    result.update(result_queue.get(timeout=300))
    srv.join(120)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1000, 3000])
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--heartbeat", nargs="+", choices=["quiet", "classic"], default=["quiet", "classic"])
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    results = []
    for count in args.sessions:
        for heartbeat in args.heartbeat:
            figures = measure(count, args.idle, heartbeat == "quiet")
            figures["heartbeat"] = heartbeat
            figures["library"] = os.path.dirname(reliable_tcp.__file__)
            print(json.dumps(figures), flush=True)
            results.append(figures)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
