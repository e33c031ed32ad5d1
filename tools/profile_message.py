#!/usr/bin/env python3
"""Where a message's CPU time goes, on each side, sampled with Linux ``perf``.

    python tools/profile_message.py --size 64                 # one-way stream, pure build
    python tools/profile_message.py --size 65536 --python VENV/bin/python   # the compiled build
    python tools/profile_message.py --mode rtt                # 64 B request/reply

A receiver and a sender (or an echo server and a client) run in processes
of their own over 127.0.0.1, with the threaded API (one ``send()`` and one
``recv()`` per message). Once both are connected, ``perf record`` samples
each process until it exits. Each side reports the CPU time it used from
then on and the messages it handled, so every share of its samples becomes
microseconds per message.

mypyc's compiled functions are C functions, so ``perf`` names them (cProfile
and py-spy do not see them); the pure build's Python code shows as the
interpreter. Needs ``perf`` (Debian: ``apt-get install linux-perf``) and
permission to sample (root, or ``kernel.perf_event_paranoid`` <= 1).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Sample buckets, first match wins: (name, shared-object pattern, symbol pattern).
BUCKETS = [
    ("CRC-32 (zlib)", r"libz\.", r"crc32"),
    ("copies in user space (libc memmove/memcpy)", r"libc\.", r"mem(move|cpy)"),
    ("copies between user and kernel", r"kernel", r"_copy_(to|from)_iter|copy_user"),
    ("kernel: scheduling, wake-ups, futex", r"kernel", r"task_switch|schedule|futex|wake|spin_unlock_irq|try_to_wake"),
    ("kernel: TCP/IP, syscalls, the rest", r"kernel", r""),
    ("reliable_tcp compiled by mypyc", r"mypyc|reliable_tcp", r""),
    ("clock reads (vDSO clock_gettime)", r"vdso", r""),
    ("CPython: interpreter, objects, allocation", r"libpython|python3", r""),
    ("everything else", r"", r""),
]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------ children


def _thread_names() -> dict[str, str]:
    """Thread names by kernel thread id (perf reports threads by id)."""
    import threading

    return {str(thread.native_id): thread.name for thread in threading.enumerate()}


def _child(role: str, port: int, size: int, seconds: float) -> None:
    """One side; prints 'ready PORT' once connected, waits for a line on
    stdin (perf is attached), runs, prints its figures as JSON."""
    import reliable_tcp as rt

    if role in ("recv", "echo"):
        with rt.listen(("127.0.0.1", 0)) as listener:
            print(f"ready {listener.address[1]}", flush=True)
            channel = listener.accept(timeout=60)
            sys.stdin.readline()
            start, count = _cpu(), 0
            while True:
                message = channel.recv(timeout=30)
                if message == b"end":
                    break
                count += 1
                if role == "echo":
                    channel.send(message)
            used = _cpu() - start
            threads = _thread_names()
            channel.close(timeout=10)
    else:
        channel = rt.connect(("127.0.0.1", port))
        print(f"ready {port}", flush=True)
        sys.stdin.readline()
        message = bytes(size)
        start, count, rtts = _cpu(), 0, []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if role == "send":
                for _ in range(100):
                    channel.send(message)
                count += 100
            else:
                began = time.perf_counter()
                channel.send(message)
                channel.recv(timeout=10)
                rtts.append(time.perf_counter() - began)
                count += 1
        channel.send(b"end")
        channel.flush(timeout=60)
        used = _cpu() - start
        threads = _thread_names()
        channel.close(timeout=10)
        if rtts:
            print(json.dumps({"rtt_p50_us": statistics.median(rtts) * 1e6}), flush=True)
    print(json.dumps({"cpu_s": used, "messages": count, "compiled": bool(rt.COMPILED), "threads": threads}), flush=True)


# -------------------------------------------------------------------- parent


def _spawn(python: str, role: str, port: int, args: argparse.Namespace, env: dict[str, str]) -> subprocess.Popen[str]:
    command = [python, os.path.abspath(__file__), "--child", role, "--port", str(port), "--size", str(args.size),
               "--seconds", str(args.seconds)]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tempfile.gettempdir())


def _ready(process: subprocess.Popen[str]) -> int:
    assert process.stdout is not None
    line = process.stdout.readline().split()
    if not line or line[0] != "ready":
        raise SystemExit(f"a child failed to start (exit {process.wait()})")
    return int(line[1])


def _perf_rows(data: str, sort: str) -> list[list[str]]:
    """``perf report`` of ``data`` sorted by ``sort``: each row's share (%) and its keys."""
    out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none", "--sort", sort,
                          "--field-separator=|"], capture_output=True, text=True, check=True).stdout
    return [[part.strip() for part in line.split("|", sort.count(",") + 1)] for line in out.splitlines()
            if not line.startswith("#") and "|" in line]


def _report(data: str) -> list[tuple[float, str, str]]:
    return [(float(share.rstrip("%")), dso, sym.split("] ", 1)[-1]) for share, dso, sym in _perf_rows(data, "dso,sym")]


def _report_threads(data: str) -> list[tuple[float, str]]:
    return [(float(share.rstrip("%")), tid.split(":")[0]) for share, tid in _perf_rows(data, "pid")]


def _bucket(dso: str, sym: str) -> str:
    for name, dso_pattern, sym_pattern in BUCKETS:
        if re.search(dso_pattern, dso) and re.search(sym_pattern, sym):
            return name
    return BUCKETS[-1][0]


def _print_side(
    title: str, rows: list[tuple[float, str, str]], threads: list[tuple[float, str]], figures: dict[str, Any], top: int
) -> dict[str, Any]:
    per_message_us = figures["cpu_s"] / max(1, figures["messages"]) * 1e6
    buckets: dict[str, float] = {}
    for share, dso, sym in rows:
        name = _bucket(dso, sym)
        buckets[name] = buckets.get(name, 0.0) + share
    total = sum(buckets.values()) or 1.0
    print(f"\n{title}: {figures['messages']:,} messages, {per_message_us:.2f} us of CPU per message")
    result = {"cpu_us_per_message": round(per_message_us, 3), "buckets": {}, "top": []}
    for name, share in sorted(buckets.items(), key=lambda item: -item[1]):
        us = per_message_us * share / total
        result["buckets"][name] = {"share": round(share / total, 4), "us": round(us, 3)}
        print(f"  {name:44} {100 * share / total:5.1f} %  {us:8.3f} us")
    names = figures.get("threads", {})
    print("  by thread:")
    result["threads"] = {}
    for share, tid in threads:
        name = names.get(tid, f"thread {tid} (ended before the count)")
        result["threads"][name] = round(share / 100, 4)
        print(f"    {share:5.1f} %  {per_message_us * share / 100:8.3f} us  {name}")
    print("  top symbols:")
    for share, dso, sym in rows[:top]:
        print(f"    {100 * share / total:5.1f} %  {os.path.basename(dso)[:28]:28} {sym[:70]}")
        result["top"].append({"share": round(share / total, 4), "dso": os.path.basename(dso), "symbol": sym})
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("stream", "rtt"), default="stream")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--python", default=None, help="the interpreter whose installed reliable_tcp is measured "
                        "(a compiled build's venv); default: this one, with the checkout's sources")
    parser.add_argument("--frequency", type=int, default=2999, help="perf samples per second")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", default=None)
    parser.add_argument("--keep", default=None, help="keep perf's data files in this directory (server.data, client.data)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.port, args.size, args.seconds)
        return 0
    if shutil.which("perf") is None:
        raise SystemExit("perf is not installed (Debian: apt-get install linux-perf)")
    python = args.python or sys.executable
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    if args.python is None:
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    server_role, client_role = ("recv", "send") if args.mode == "stream" else ("echo", "rtt")
    workdir = args.keep or tempfile.mkdtemp(prefix="profile-message-")
    os.makedirs(workdir, exist_ok=True)
    processes: list[subprocess.Popen[Any]] = []
    try:
        server = _spawn(python, server_role, 0, args, env)
        processes.append(server)
        port = _ready(server)
        client = _spawn(python, client_role, port, args, env)
        processes.append(client)
        _ready(client)
        perfs = []
        for name, process in (("server", server), ("client", client)):
            data = os.path.join(workdir, f"{name}.data")
            perfs.append((name, data, subprocess.Popen(["perf", "record", "-q", "-F", str(args.frequency), "-o", data,
                                                        "-p", str(process.pid)], stdout=subprocess.DEVNULL,
                                                       stderr=subprocess.DEVNULL)))
            processes.append(perfs[-1][2])
        time.sleep(0.5)  # perf attaches
        for process in (server, client):
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        figures: dict[str, dict[str, Any]] = {"server": {}, "client": {}}
        for name, process in (("server", server), ("client", client)):
            out, _ = process.communicate(timeout=args.seconds + 120)
            for line in out.splitlines():
                figures[name].update(json.loads(line))
        for _, _, perf in perfs:
            perf.wait(timeout=60)
        build = "compiled" if figures["server"].get("compiled") else "pure"
        title = f"{args.mode}, {args.size} B messages, the {build} build"
        if "rtt_p50_us" in figures["client"]:
            title += f", round trip p50 {figures['client']['rtt_p50_us']:.1f} us"
        print(title)
        roles = {"stream": ("receiver", "sender"), "rtt": ("echo server", "client")}[args.mode]
        results: dict[str, Any] = {"mode": args.mode, "size": args.size, "build": build, "python": python,
                                   "rtt_p50_us": figures["client"].get("rtt_p50_us")}
        for (name, data, _), role in zip(perfs, roles, strict=True):
            results[role] = _print_side(role, _report(data), _report_threads(data), figures[name], args.top)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
