"""Where a round trip's time goes, step by step, in one process.

    python tools/trace_round_trip.py                 # the checkout (pure build)
    PYTHONSAFEPATH=1 <venv>/bin/python tools/trace_round_trip.py --installed   # a compiled build
    python tools/trace_round_trip.py --bare          # the bare shape (tools/bench.py), for comparison

A client and an echo server, each a channel with its own reader (and
writer) thread, exchange 64 B messages in one process over 127.0.0.1. Every
socket ``send`` and ``recv_into`` and the application's calls are
time-stamped (``perf_counter_ns``; the socket methods are wrapped, which
works on either build because the channels call them as Python methods),
and the most common sequence of steps is printed with the median time
from each step to the next. Then, over the same round trips untraced, the
CPU time and the voluntary context switches of each thread per round trip
(``/proc/self/task``, Linux).

A step's time includes waking the thread that takes it: the hand-offs
between threads are where a round trip goes, beside the socket calls.
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if "--installed" not in sys.argv:
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_now = time.perf_counter_ns
_steps: list[tuple[str, str, int]] = []
_tracing = False


def _trace(step: str) -> None:
    if _tracing:
        _steps.append((step, threading.current_thread().name, _now()))


def _wrap_socket_calls() -> None:
    """Time-stamp every socket send and receive of this process."""
    plain_send, plain_recv_into, plain_recv = socket.socket.send, socket.socket.recv_into, socket.socket.recv

    def send(self: socket.socket, *args: Any) -> int:
        _trace("socket send begins")
        try:
            return plain_send(self, *args)
        finally:
            _trace("socket send returned")

    def recv_into(self: socket.socket, *args: Any) -> int:
        count = plain_recv_into(self, *args)
        _trace("socket recv returned")
        return count

    def recv(self: socket.socket, *args: Any) -> bytes:
        data = plain_recv(self, *args)
        _trace("socket recv returned")
        return data

    socket.socket.send = send  # type: ignore[method-assign]
    socket.socket.recv_into = recv_into  # type: ignore[method-assign]
    socket.socket.recv = recv  # type: ignore[method-assign]


def _threads() -> dict[str, tuple[str, int, int]]:
    """Each thread of this process: name, CPU ns, voluntary context switches."""
    names = {str(thread.native_id): thread.name for thread in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        name = names.get(tid, f"thread {tid}")
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                cpu_ns = int(f.read().split()[0])
            with open(f"/proc/self/task/{tid}/status") as f:
                switches = int(f.read().split("\nvoluntary_ctxt_switches:")[1].split()[0])
        except (OSError, IndexError):
            continue
        out[tid] = (name, cpu_ns, switches)
    return out


def _pair(bare: bool) -> tuple[Callable[[bytes], None], Callable[[], bytes], Callable[[], None], str]:
    """A client's send and recv, the echo server started, a cleanup, a label."""
    if bare:
        import bench

        server = socket.create_server(("127.0.0.1", 0))
        client_end = bench._BareShape(socket.create_connection(server.getsockname()), direct=True)
        conn, _ = server.accept()
        server.close()
        server_end = bench._BareShape(conn, direct=True)

        def echo() -> None:
            while True:
                message = server_end.recv()
                _trace("server recv() returned")
                server_end.send(message)

        threading.Thread(target=echo, name="echo", daemon=True).start()
        return client_end.send, client_end.recv, lambda: None, "bare threads (tools/bench.py), no protocol"

    import reliable_tcp

    listener = reliable_tcp.listen(("127.0.0.1", 0))
    client = reliable_tcp.connect(listener.address)
    peer = listener.accept(timeout=10)

    def serve() -> None:
        try:
            while True:
                message = peer.recv()
                _trace("server recv() returned")
                peer.send(message)
        except reliable_tcp.ReliableTCPError:
            return

    thread = threading.Thread(target=serve, name="echo", daemon=True)
    thread.start()

    def close() -> None:
        client.close(timeout=10)
        peer.close(timeout=10)
        listener.close()
        thread.join(10)

    build = "compiled" if reliable_tcp.COMPILED else "pure"
    return client.send, lambda: client.recv(timeout=10), close, f"reliable_tcp, {build} build"


def main() -> int:
    global _tracing
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=3000, help="round trips traced, and as many untraced")
    parser.add_argument("--bare", action="store_true", help="the bare shape instead of reliable_tcp")
    parser.add_argument("--installed", action="store_true", help="the installed reliable_tcp, not the checkout's")
    args = parser.parse_args()
    _wrap_socket_calls()
    send, recv, close, label = _pair(args.bare)
    payload = os.urandom(64)
    for _ in range(300):
        send(payload)
        recv()
    rounds = []
    for _ in range(args.count):
        _steps.clear()
        _tracing = True
        _trace("client send() called")
        send(payload)
        recv()
        _trace("client recv() returned")
        _tracing = False
        rounds.append(list(_steps))
    before, start = _threads(), time.perf_counter()
    for _ in range(args.count):
        send(payload)
        recv()
    elapsed, after = time.perf_counter() - start, _threads()
    close()

    def shape(steps: list[tuple[str, str, int]]) -> tuple[tuple[str, str], ...]:
        return tuple((step, thread) for step, thread, _ in steps)

    common, seen = collections.Counter(map(shape, rounds)).most_common(1)[0]
    chosen = [r for r in rounds if shape(r) == common]
    print(f"{label}: {args.count} round trips of 64 B in one process")
    print(f"most common sequence of steps ({seen} of {args.count}), median µs from the step before:")
    for index, (step, thread) in enumerate(common):
        gap = statistics.median((r[index][2] - r[index - 1][2]) / 1000 for r in chosen) if index else 0.0
        print(f"  {gap:8.1f}  {step:<26} {thread}")
    total = statistics.median((r[-1][2] - r[0][2]) / 1000 for r in chosen)
    print(f"  {total:8.1f}  the round trip, traced")
    print(f"untraced: {elapsed / args.count * 1e6:.1f} µs per round trip; per thread and round trip:")
    for tid, (name, cpu_ns, switches) in sorted(after.items(), key=lambda item: item[1][0]):
        if tid in before:
            cpu = (cpu_ns - before[tid][1]) / args.count / 1000
            waits = (switches - before[tid][2]) / args.count
            if cpu >= 0.5:
                print(f"  {name:<16} {cpu:7.1f} µs of CPU, {waits:.2f} voluntary context switches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
