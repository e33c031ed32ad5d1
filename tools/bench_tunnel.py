#!/usr/bin/env python3
"""Throughput through an rtcat -L tunnel beside plain rtcat, on loopback, in one run.

    python tools/bench_tunnel.py [--mb 200] [--repeat 3]

Tunnel: a TCP source -> rtcat -L -> rtcat -l --allow -> a TCP sink, timed
from the source's connect to the sink's last byte (the sink's count is
checked). Direct: ``rtcat < file`` to ``rtcat -l > /dev/null``, timed from
start to exit (so it includes starting two processes). Prints MB/s for each
and the ratio.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
RTCAT = [sys.executable, "-m", "reliable_tcp"]
ENV = {**os.environ, "PYTHONPATH": ROOT}


def _port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # polling until the process listens


def tunnel_once(data: bytes) -> float:
    sink = socket.create_server(("127.0.0.1", 0))
    sink_port = sink.getsockname()[1]
    got = [0]

    def drain() -> None:
        conn, _ = sink.accept()
        with conn:
            while chunk := conn.recv(1 << 20):
                got[0] += len(chunk)

    listener_port, forward_port = _port(), _port()
    procs = [
        subprocess.Popen([*RTCAT, "-l", "127.0.0.1", str(listener_port), "--allow", f"127.0.0.1:{sink_port}"],
                         env=ENV, stderr=subprocess.DEVNULL),
        subprocess.Popen([*RTCAT, "-v", "-L", f"{forward_port}:127.0.0.1:{sink_port}", "127.0.0.1",
                          str(listener_port)], env=ENV, stderr=subprocess.PIPE),
    ]
    try:
        _wait_listening(listener_port)
        stderr = procs[1].stderr
        assert stderr is not None
        assert stderr.readline().startswith(b"rtcat: forwarding")  # -L listens (a probe would be a tunnel itself)
        drainer = threading.Thread(target=drain, daemon=True)
        drainer.start()
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", forward_port)) as source:
            source.sendall(data)
            source.shutdown(socket.SHUT_WR)
            drainer.join(300)
            elapsed = time.perf_counter() - start
        assert got[0] == len(data), (got[0], len(data))
        return len(data) / elapsed / 1e6
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        sink.close()


def direct_once(path: str, size: int) -> float:
    port = _port()
    listener = subprocess.Popen([*RTCAT, "-l", "127.0.0.1", str(port)], env=ENV, stdout=subprocess.DEVNULL)
    try:
        start = time.perf_counter()
        with open(path, "rb") as fin:
            subprocess.run([*RTCAT, "127.0.0.1", str(port)], env=ENV, stdin=fin, check=True, timeout=300)
        listener.wait(60)
        return size / (time.perf_counter() - start) / 1e6
    finally:
        if listener.poll() is None:
            listener.terminate()
            listener.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = os.urandom(args.mb * 1_000_000)
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        tunnel = [tunnel_once(data) for _ in range(args.repeat)]
        direct = [direct_once(f.name, len(data)) for _ in range(args.repeat)]
    t, d = statistics.median(tunnel), statistics.median(direct)
    print(f"tunnel (-L, TCP in and out): {t:.1f} MB/s (runs {', '.join(f'{x:.0f}' for x in tunnel)})")
    print(f"direct rtcat (stdin to stdout): {d:.1f} MB/s (runs {', '.join(f'{x:.0f}' for x in direct)})")
    print(f"tunnel / direct: {t / d:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
