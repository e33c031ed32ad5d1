#!/usr/bin/env python3
"""Several nodes behind HAProxy beside one node without a balancer, in one run.

    python tools/bench_scaling.py [--nodes 3] [--sessions-per-node 1000] [--messages 256]

For each setup: node processes (tests/support/node_server.py, asyncio
front, each echoing every message), sessions from this process (asyncio
clients) connected in waves, then
- throughput: every session sends ``--messages`` 64-byte messages
  (``send_many``) and reads their echoes; aggregate echoed msg/s;
- mass disconnect: every client connection is destroyed at once
  (``ss -K``, so each end sees a reset), and the time until every session
  has resumed (p50 and the last one), and whether any session was lost.
Needs HAProxy (apt-get install haproxy) and root for ``ss -K``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import haproxy_config  # noqa: E402

import reliable_tcp  # noqa: E402
import reliable_tcp.asyncio as rta  # noqa: E402
from reliable_tcp.core.frames import node_id_of  # noqa: E402

NODE = [sys.executable, os.path.join(ROOT, "tests", "support", "node_server.py")]
ENV = {**os.environ, "PYTHONPATH": ROOT}


def _port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def _wait(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # polling until it listens


async def _measure(port: int, sessions: int, messages: int) -> dict[str, Any]:
    channels: list[rta.Channel] = []
    started = time.perf_counter()
    for first in range(0, sessions, 100):
        wave = min(100, sessions - first)
        channels += await asyncio.gather(*(rta.connect(("127.0.0.1", port), timeout=120) for _ in range(wave)))
    connect_s = time.perf_counter() - started
    spread: dict[int, int] = {}
    for channel in channels:
        node = node_id_of(bytes.fromhex(channel.session_id))
        spread[node] = spread.get(node, 0) + 1
    batch = [b"m" * 64] * messages

    async def echo(channel: rta.Channel) -> None:
        await channel.send_many(batch)
        got = 0
        while got < messages:
            got += len(await channel.recv_many())

    started = time.perf_counter()
    await asyncio.gather(*(echo(c) for c in channels))
    rate = sessions * messages / (time.perf_counter() - started)

    before = [c.statistics().resumes for c in channels]
    cut = time.perf_counter()
    subprocess.run(["ss", "-K", "dst", "127.0.0.1", "dport", "=", str(port)], capture_output=True, check=False)
    resumed_at: dict[int, float] = {}
    deadline = cut + 300
    while len(resumed_at) < sessions and time.perf_counter() < deadline:
        for index, channel in enumerate(channels):
            if index not in resumed_at and channel.statistics().resumes > before[index]:
                resumed_at[index] = time.perf_counter() - cut
        await asyncio.sleep(0.01)  # polling the sessions' counters while the loop resumes them
    times = sorted(resumed_at.values())
    lost = sum(c.state is reliable_tcp.ChannelState.FAILED for c in channels)
    await asyncio.gather(*(echo(c) for c in channels))  # and they all still work
    await asyncio.gather(*(c.close(timeout=60) for c in channels))
    return {
        "sessions": sessions, "by_node": spread, "connect_s": round(connect_s, 2), "echo_msgs_per_s": round(rate),
        "resumed": len(times), "resume_p50_s": round(statistics.median(times), 3) if times else None,
        "resume_all_s": round(times[-1], 3) if len(times) == sessions else None, "lost": lost,
    }


def run(nodes: int, per_node: int, messages: int, balancer: bool) -> dict[str, Any]:
    procs: list[subprocess.Popen[bytes]] = []
    ports = {node: _port() for node in range(1, nodes + 1)}
    try:
        for node, port in ports.items():
            proc = subprocess.Popen([*NODE, "--port", str(port), "--node-id", str(node), "--front", "asyncio",
                                     "--heartbeat", "3"], env=ENV, stdout=subprocess.DEVNULL)
            procs.append(proc)
            _wait(port, proc)
        port = ports[1]
        if balancer:
            haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
            port = _port()
            with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as config:
                config.write(haproxy_config.render(f"127.0.0.1:{port}", {n: f"127.0.0.1:{p}" for n, p in ports.items()}))
            proc = subprocess.Popen([haproxy, "-db", "-f", config.name], stdout=subprocess.DEVNULL)
            procs.append(proc)
            _wait(port, proc)
        return asyncio.run(_measure(port, nodes * per_node, messages))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--sessions-per-node", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=256)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if os.geteuid() != 0 or not (shutil.which("haproxy") or os.path.exists("/usr/sbin/haproxy")):
        print("needs root (for ss -K) and HAProxy (apt-get install haproxy)", file=sys.stderr)
        return 2
    direct = run(1, args.sessions_per_node, args.messages, balancer=False)
    print(f"one node, no balancer: {direct}", flush=True)
    balanced = run(args.nodes, args.sessions_per_node, args.messages, balancer=True)
    print(f"{args.nodes} nodes behind HAProxy: {balanced}", flush=True)
    print(f"aggregate echo msg/s, {args.nodes} nodes / 1 node: {balanced['echo_msgs_per_s'] / direct['echo_msgs_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
