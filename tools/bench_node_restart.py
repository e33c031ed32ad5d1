#!/usr/bin/env python3
"""How long a restarted node behind HAProxy takes to get its sessions back.

    python tools/bench_node_restart.py [--sessions 20] [--rounds 5] [--down-for SECONDS]

Two journaled nodes (tests/support/node_server.py) behind HAProxy with
tools/haproxy_config.py's configuration as it ships (checks every second,
``rise 2``), clients with the default backoff. Each round kills node 1
with SIGKILL, starts it again on its journal, and measures, for each of
its sessions, the time from the node listening again to the session
resumed: what HAProxy's checks and the client's backoff add to the node's
own restart. Prints the node's own restart time beside it. Needs HAProxy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import haproxy_config  # noqa: E402

import reliable_tcp as rt  # noqa: E402
from reliable_tcp.core import frames as f  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.005)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--down-for", type=float, default=0.0,
                        help="keep the node down this long before starting it again (s; over 3 s HAProxy marks it DOWN)")
    args = parser.parse_args()
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.path.exists(haproxy):
        print("needs HAProxy (apt-get install haproxy)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-node-restart-"))
    ports = {1: free_port(), 2: free_port()}
    front = free_port()
    procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(node: int) -> float:
        (tmp / f"out{node}").mkdir(exist_ok=True)
        began = time.monotonic()
        procs[node] = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "support" / "node_server.py"), "--port", str(ports[node]),
             "--node-id", str(node), "--heartbeat", "1", "--journal", str(tmp / f"journal{node}"),
             "--out", str(tmp / f"out{node}")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
        wait(lambda: listening(ports[node]), 30, f"node {node}")
        return time.monotonic() - began

    config = tmp / "haproxy.cfg"
    config.write_text(haproxy_config.render(f"127.0.0.1:{front}", {n: f"127.0.0.1:{p}" for n, p in ports.items()}))
    balancer = None
    clients: list[rt.Channel] = []
    try:
        for node in ports:
            start(node)
        balancer = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        wait(lambda: listening(front), 30, "HAProxy")
        time.sleep(2.5)  # both nodes pass their first two checks (rise 2) before the sessions open
        clients = [rt.connect(("127.0.0.1", front), timeout=30, heartbeat_interval=1.0, resume_window=60.0)
                   for _ in range(args.sessions)]
        mine = [c for c in clients if f.node_id_of(bytes.fromhex(c.session_id)) == 1]
        print(f"{len(clients)} sessions, {len(mine)} on node 1; {args.rounds} restarts of node 1, "
              f"down {args.down_for:g} s each")
        own: list[float] = []
        added: list[float] = []
        for _ in range(args.rounds):
            before = [c.statistics().resumes for c in mine]
            os.kill(procs[1].pid, signal.SIGKILL)
            procs[1].wait(10)
            time.sleep(args.down_for)
            own.append(start(1))
            back = time.monotonic()
            pending = set(range(len(mine)))
            while pending:
                for i in list(pending):
                    if mine[i].statistics().resumes > before[i]:
                        added.append(time.monotonic() - back)
                        pending.discard(i)
                if time.monotonic() - back > 60:
                    raise SystemExit("a session did not resume within 60 s")
                time.sleep(0.005)
        added.sort()
        print(f"node's own restart (exec to listening): {min(own):.2f}-{max(own):.2f} s")
        print(f"then to every session resumed: min {added[0]:.2f} s, median {added[len(added) // 2]:.2f} s, "
              f"max {added[-1]:.2f} s")
        return 0
    finally:
        for client in clients:
            client.abort()
        for proc in [*procs.values(), *([balancer] if balancer else [])]:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
