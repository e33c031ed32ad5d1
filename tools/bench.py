#!/usr/bin/env python3
"""Benchmarks: reliable_tcp beside raw TCP and the peers, each side in its own process.

    python tools/bench.py --quick            # about a minute
    python tools/bench.py --json results.json
    python tools/bench.py --compiled build   # the compiled build too (built in a temporary venv)

Measures over 127.0.0.1, in one invocation:
- one-way stream throughput (messages/s, MB/s at the receiver) for 64 B,
  1 KiB and 64 KiB messages;
- round-trip latency of 64 B messages (p50, p99);
- CPU time per message and peak RSS of each side;
for reliable_tcp (the pure build, and with --compiled the compiled one),
raw TCP with a 4-byte length prefix and batched writes, pyzmq PUSH/PULL
(REQ/REP for the round trip), websockets' threaded API and paho-mqtt QoS 1
through a local mosquitto (each only when installed: ``pip install -e
'.[bench]'``, ``apt-get install mosquitto``). Prints a table with ratios
to raw TCP from the same run (median of the repetitions, with min-max
spread), then every target of issue 26 as a ratio marked PASS or short,
and writes JSON (and with --chart, a matplotlib chart). The repetitions
go round robin (each measures every transport and size once), so that the
machine's drift during the run falls on every transport alike.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

# The checkout's reliable_tcp (the pure build), unless --installed asks for
# the one this interpreter has installed (the compiled build in its venv).
# A side started under the compiled build's interpreter (_run_pair) gets
# that interpreter's own import path in _CHILD_PATH: spawn hands every child
# the parent's sys.path, which would find the checkout instead.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CHILD_PATH = "RELIABLE_TCP_BENCH_SYS_PATH"
if os.environ.get(_CHILD_PATH):
    sys.path[:] = json.loads(os.environ[_CHILD_PATH])
elif "--installed" not in sys.argv:
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_asyncio as aio  # noqa: E402  (the asyncio front end's parts, beside these)

SIZES = (64, 1024, 65536)
_LEN = struct.Struct(">I")


_usage = aio._usage  # CPU seconds and peak RSS (VmHWM: see there why not ru_maxrss)


def _count_for(size: int, seconds: float) -> int:
    # Aim for a run of roughly ``seconds`` at a few hundred MB/s or ~300k msg/s.
    return max(2000, int(min(300_000 * seconds, 400e6 * seconds / size)))


# --------------------------------------------------------------------- raw TCP


def raw_receiver(port_queue: Any, result_queue: Any, count: int, size: int) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port_queue.put(server.getsockname()[1])
    conn, _ = server.accept()
    buffer = bytearray()
    got = 0
    start = None
    while got < count:
        chunk = conn.recv(1 << 20)
        if not chunk:
            break
        if start is None:
            start = time.perf_counter()
        buffer += chunk
        offset = 0
        while len(buffer) - offset >= 4:
            (length,) = _LEN.unpack_from(buffer, offset)
            if len(buffer) - offset - 4 < length:
                break
            _ = bytes(buffer[offset + 4 : offset + 4 + length])  # hand a message out, as an app would get it
            offset += 4 + length
            got += 1
        del buffer[:offset]
    elapsed = time.perf_counter() - (start or time.perf_counter())
    conn.sendall(b"k")
    result_queue.put({"side": "receiver", "elapsed": elapsed, "messages": got, **_usage()})


def raw_sender(port: int, result_queue: Any, count: int, size: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = os.urandom(size)
    framed = _LEN.pack(size) + payload
    per_batch = max(1, (256 * 1024) // len(framed))
    sent = 0
    while sent < count:
        n = min(per_batch, count - sent)
        sock.sendall(framed * n)
        sent += n
    sock.recv(1)
    result_queue.put({"side": "sender", **_usage()})


def raw_echo_server(port_queue: Any, result_queue: Any, count: int, size: int) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port_queue.put(server.getsockname()[1])
    conn, _ = server.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(count):
        header = _recv_exact(conn, 4)
        (length,) = _LEN.unpack(header)
        conn.sendall(header + _recv_exact(conn, length))
    result_queue.put({"side": "receiver", **_usage()})


def raw_ping_client(port: int, result_queue: Any, count: int, size: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = _LEN.pack(size) + os.urandom(size)
    times = _round_trips(sock.sendall, lambda: _recv_exact(sock, len(payload)), count, payload)
    result_queue.put({"side": "sender", "rtts": times, **_usage()})


def _round_trips(send: Callable[[bytes], object], recv: Callable[[], object], count: int, payload: bytes) -> list[float]:
    """Seconds per request and reply, ``count`` of them, each request ``payload``."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        send(payload)
        recv()
        times.append(time.perf_counter() - start)
    return times


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


# ------------------------------------------- the bare shape (no protocol at all)


class _BareShape:
    """reliable_tcp's threads with nothing between them but queues: an
    application thread, a reader thread and a writer thread per connection,
    a Condition each way, 4-byte length framing, and no CRC, sequence
    numbers, acks, window, timers or liveness. What CPython charges for the
    shape itself: the floor that reliable_tcp's protocol work adds to.

    ``direct``: send() writes from the calling thread when the writer is
    idle, as reliable_tcp does when nothing else is in flight (a request, a
    reply). Without acks the bare shape cannot tell a stream from a
    request, so the round trip turns it on and the stream leaves every
    write to the writer, which batches."""

    _INBOX_LIMIT = 10_000  # the reader waits beyond this, as reliable_tcp's inbox bound does
    _OUTBOX_LIMIT = 16 << 20  # send() waits beyond this many bytes, as reliable_tcp's window does

    def __init__(self, sock: socket.socket, *, direct: bool) -> None:
        self.direct = direct
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.lock = threading.Lock()
        self.readable = threading.Condition(self.lock)
        self.room = threading.Condition(self.lock)
        self.writable = threading.Condition(self.lock)
        self.idle = threading.Condition(self.lock)  # the writer waits with nothing left to send
        self.send_room = threading.Condition(self.lock)
        self.outbox_bytes = 0
        self.inbox: collections.deque[bytes] = collections.deque()
        self.outbox: list[bytes] = []
        self.writer_waiting = False
        self.direct_writing = False
        for target in (self._read, self._write):
            threading.Thread(target=target, daemon=True).start()

    def send(self, data: bytes) -> None:
        frame = _LEN.pack(len(data)) + data
        with self.lock:
            direct = self.direct and self.writer_waiting and not self.outbox and not self.direct_writing
            if direct:
                self.direct_writing = True
            else:
                while self.outbox_bytes >= self._OUTBOX_LIMIT:
                    self.send_room.wait()
                self.outbox.append(frame)
                self.outbox_bytes += len(frame)
                if self.writer_waiting:
                    self.writable.notify()
        if direct:
            try:
                sent = self.sock.send(frame, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            with self.lock:
                self.direct_writing = False
                if sent < len(frame):
                    self.outbox.insert(0, frame[sent:])
                if self.outbox:
                    self.writable.notify()

    def recv(self) -> bytes:
        with self.lock:
            while not self.inbox:
                self.readable.wait()
            message = self.inbox.popleft()
            if len(self.inbox) == self._INBOX_LIMIT - 1:
                self.room.notify()
            return message

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until everything sent has left (daemon threads die with the
        process, so the last words would be lost without this)."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while self.outbox or self.direct_writing or not self.writer_waiting:
                if not self.idle.wait(deadline - time.monotonic()):
                    raise TimeoutError("the bare shape's writer did not finish")

    def _write(self) -> None:
        while True:
            with self.lock:
                while not self.outbox or self.direct_writing:
                    self.writer_waiting = True
                    self.idle.notify_all()
                    self.writable.wait()
                    self.writer_waiting = False
                batch, self.outbox = self.outbox, []
                self.outbox_bytes = 0
                self.send_room.notify_all()
            self.sock.sendall(b"".join(batch))

    def _read(self) -> None:
        buffer = bytearray()
        while True:
            chunk = self.sock.recv(256 * 1024)
            if not chunk:
                return
            buffer += chunk
            offset, messages = 0, []
            while len(buffer) - offset >= 4:
                (length,) = _LEN.unpack_from(buffer, offset)
                if len(buffer) - offset - 4 < length:
                    break
                messages.append(bytes(buffer[offset + 4 : offset + 4 + length]))
                offset += 4 + length
            del buffer[:offset]
            with self.lock:
                self.inbox.extend(messages)
                self.readable.notify()
                while len(self.inbox) >= self._INBOX_LIMIT:
                    self.room.wait()


def _bare_accept(port_queue: Any, *, direct: bool) -> _BareShape:
    server = socket.create_server(("127.0.0.1", 0))
    port_queue.put(server.getsockname()[1])
    conn, _ = server.accept()
    server.close()
    return _BareShape(conn, direct=direct)


def bare_receiver(port_queue: Any, result_queue: Any, count: int, size: int) -> None:
    end = _bare_accept(port_queue, direct=False)
    end.recv()
    start = time.perf_counter()
    for _ in range(count - 1):
        end.recv()
    elapsed = time.perf_counter() - start
    end.send(b"k")
    end.flush()
    result_queue.put({"side": "receiver", "elapsed": elapsed, "messages": count - 1, **_usage()})


def bare_sender(port: int, result_queue: Any, count: int, size: int) -> None:
    end = _BareShape(socket.create_connection(("127.0.0.1", port)), direct=False)
    payload = os.urandom(size)
    for _ in range(count):
        end.send(payload)
    end.recv()  # the receiver has them all
    result_queue.put({"side": "sender", **_usage()})


def bare_echo_server(port_queue: Any, result_queue: Any, count: int, size: int) -> None:
    end = _bare_accept(port_queue, direct=True)
    for _ in range(count):
        end.send(end.recv())
    end.flush()
    result_queue.put({"side": "receiver", **_usage()})


def bare_ping_client(port: int, result_queue: Any, count: int, size: int) -> None:
    end = _BareShape(socket.create_connection(("127.0.0.1", port)), direct=True)
    times = _round_trips(end.send, end.recv, count, os.urandom(size))
    result_queue.put({"side": "sender", "rtts": times, **_usage()})


# ----------------------------------------------------------------- reliable_tcp


def rt_receiver(port_queue: Any, result_queue: Any, count: int, size: int) -> None:
    import reliable_tcp

    with reliable_tcp.listen(("127.0.0.1", 0)) as listener:
        port_queue.put(listener.address[1])
        channel = listener.accept()
        got = 0
        start = None
        while got < count:
            messages = channel.recv_many(4096)
            if start is None:
                start = time.perf_counter()
            got += len(messages)
        elapsed = time.perf_counter() - (start or time.perf_counter())
        try:
            for _ in channel:
                pass
        except reliable_tcp.ReliableTCPError:
            pass
        channel.close()
    result_queue.put({"side": "receiver", "elapsed": elapsed, "messages": got, **_usage()})


def rt_receiver_single(port_queue: Any, result_queue: Any, count: int, size: int) -> None:
    """One recv() per message: how applications read."""
    import reliable_tcp

    with reliable_tcp.listen(("127.0.0.1", 0)) as listener:
        port_queue.put(listener.address[1])
        channel = listener.accept()
        recv = channel.recv
        recv()
        start = time.perf_counter()
        for _ in range(count - 1):
            recv()
        elapsed = time.perf_counter() - start
        try:
            for _ in channel:
                pass
        except reliable_tcp.ReliableTCPError:
            pass
        channel.close()
    result_queue.put({"side": "receiver", "elapsed": elapsed, "messages": count - 1, **_usage()})


def rt_sender(port: int, result_queue: Any, count: int, size: int) -> None:
    import reliable_tcp

    channel = reliable_tcp.connect(("127.0.0.1", port))
    payload = os.urandom(size)
    batch = [payload] * max(1, min(1024, (1 << 20) // size))
    sent = 0
    while sent < count:
        n = min(len(batch), count - sent)
        channel.send_many(batch[:n])
        sent += n
    channel.close(timeout=60)
    result_queue.put({"side": "sender", **_usage()})


def rt_sender_single(port: int, result_queue: Any, count: int, size: int) -> None:
    import reliable_tcp

    channel = reliable_tcp.connect(("127.0.0.1", port))
    payload = os.urandom(size)
    send = channel.send
    for _ in range(count):
        send(payload)
    channel.close(timeout=60)
    result_queue.put({"side": "sender", **_usage()})


def rt_echo_server(port_queue: Any, result_queue: Any, count: int, size: int) -> None:
    import reliable_tcp

    with reliable_tcp.listen(("127.0.0.1", 0)) as listener:
        port_queue.put(listener.address[1])
        channel = listener.accept()
        for _ in range(count):
            channel.send(channel.recv())
        try:
            for _ in channel:
                pass
        except reliable_tcp.ReliableTCPError:
            pass
        channel.close()
    result_queue.put({"side": "receiver", **_usage()})


def rt_ping_client(port: int, result_queue: Any, count: int, size: int) -> None:
    import reliable_tcp

    channel = reliable_tcp.connect(("127.0.0.1", port))
    times = _round_trips(channel.send, channel.recv, count, os.urandom(size))
    channel.close(timeout=30)
    result_queue.put({"side": "sender", "rtts": times, **_usage()})


# ------------------------------------------------------------------------ pyzmq


def zmq_receiver(port_queue: Any, result_queue: Any, count: int, size: int) -> None:
    import zmq

    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    port_queue.put(port)
    pull.recv()
    start = time.perf_counter()
    for _ in range(count - 1):
        pull.recv()
    elapsed = time.perf_counter() - start
    pull.close()
    context.term()
    result_queue.put({"side": "receiver", "elapsed": elapsed, "messages": count - 1, **_usage()})


def zmq_sender(port: int, result_queue: Any, count: int, size: int) -> None:
    import zmq

    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    payload = os.urandom(size)
    for _ in range(count):
        push.send(payload)
    push.close(linger=-1)
    context.term()
    result_queue.put({"side": "sender", **_usage()})


def zmq_rep_server(port_queue: Any, result_queue: Any, count: int, size: int) -> None:
    import zmq

    context = zmq.Context()
    rep = context.socket(zmq.REP)
    port_queue.put(rep.bind_to_random_port("tcp://127.0.0.1"))
    for _ in range(count):
        rep.send(rep.recv())
    rep.close(linger=-1)
    context.term()
    result_queue.put({"side": "receiver", **_usage()})


def zmq_req_client(port: int, result_queue: Any, count: int, size: int) -> None:
    import zmq

    context = zmq.Context()
    req = context.socket(zmq.REQ)
    req.connect(f"tcp://127.0.0.1:{port}")
    times = _round_trips(req.send, req.recv, count, os.urandom(size))
    req.close(linger=-1)
    context.term()
    result_queue.put({"side": "sender", "rtts": times, **_usage()})


# ------------------------------------------------- websockets (threaded API)
# The pure-Python peer of our shape: websockets' sync API runs a reader
# thread per connection. Binary frames, no compression, no size limit.


def _ws_serve_one(port_queue: Any, handle: Callable[[Any], None]) -> None:
    """Serve one websockets connection with ``handle``, then stop serving."""
    from websockets.sync.server import serve

    def handler(ws: Any) -> None:
        handle(ws)
        threading.Thread(target=server.shutdown).start()  # shutdown() waits for this handler: not from it

    with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
        port_queue.put(server.socket.getsockname()[1])
        server.serve_forever()


def ws_receiver(port_queue: Any, result_queue: Any, count: int, size: int) -> None:
    def handle(ws: Any) -> None:
        recv = ws.recv
        recv()
        start = time.perf_counter()
        for _ in range(count - 1):
            recv()
        elapsed = time.perf_counter() - start
        for _ in ws:  # until the sender's close
            pass
        result_queue.put({"side": "receiver", "elapsed": elapsed, "messages": count - 1, **_usage()})

    _ws_serve_one(port_queue, handle)


def ws_sender(port: int, result_queue: Any, count: int, size: int) -> None:
    from websockets.sync.client import connect

    payload = os.urandom(size)
    with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as ws:
        send = ws.send
        for _ in range(count):
            send(payload)
    result_queue.put({"side": "sender", **_usage()})


def ws_echo_server(port_queue: Any, result_queue: Any, count: int, size: int) -> None:
    def handle(ws: Any) -> None:
        for message in ws:
            ws.send(message)
        result_queue.put({"side": "receiver", **_usage()})

    _ws_serve_one(port_queue, handle)


def ws_ping_client(port: int, result_queue: Any, count: int, size: int) -> None:
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as ws:
        times = _round_trips(ws.send, ws.recv, count, os.urandom(size))
    result_queue.put({"side": "sender", "rtts": times, **_usage()})


# ------------------------------------------------------------------ paho-mqtt


def _mqtt_client(client_id: str) -> Any:
    import paho.mqtt.client as mqtt

    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)


def mqtt_receiver(port_queue: Any, result_queue: Any, count: int, size: int, broker_port: int = 0) -> None:
    import threading

    done = threading.Event()
    state = {"got": 0, "start": 0.0}

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        if state["got"] == 0:
            state["start"] = time.perf_counter()
        state["got"] += 1
        if state["got"] >= count:
            done.set()

    subscribed = threading.Event()
    client = _mqtt_client("bench-receiver")
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect("127.0.0.1", broker_port)
    client.subscribe("bench", qos=1)
    client.loop_start()
    subscribed.wait(10)
    port_queue.put(broker_port)
    done.wait(600)
    elapsed = time.perf_counter() - state["start"]
    client.loop_stop()
    client.disconnect()
    result_queue.put({"side": "receiver", "elapsed": elapsed, "messages": state["got"], **_usage()})


def mqtt_sender(port: int, result_queue: Any, count: int, size: int) -> None:
    client = _mqtt_client("bench-sender")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    payload = os.urandom(size)
    infos = [client.publish("bench", payload, qos=1) for _ in range(count)]
    for info in infos:
        info.wait_for_publish(60)
    client.loop_stop()
    client.disconnect()
    result_queue.put({"side": "sender", **_usage()})


# ------------------------------------------------------------- many sessions


def many_server(port_queue: Any, result_queue: Any, sessions: int, seconds: float) -> None:
    import threading

    import reliable_tcp

    with reliable_tcp.listen(("127.0.0.1", 0), max_sessions=sessions + 10, backlog=1024) as listener:
        port_queue.put(listener.address[1])
        channels = [listener.accept(timeout=120) for _ in range(sessions)]
        port_queue.put("ready")
        threads = threading.active_count()
        before = _usage()
        time.sleep(seconds)  # idle on purpose: what do heartbeats cost?
        after = _usage()
        # Then every session streams at once, for the aggregate figure.
        got = [0] * sessions
        done = threading.Event()

        def drain(index: int, channel: Any) -> None:
            try:
                while True:
                    got[index] += len(channel.recv_many(4096))
            except reliable_tcp.ReliableTCPError:
                return

        readers = [threading.Thread(target=drain, args=(i, c), daemon=True) for i, c in enumerate(channels)]
        for reader in readers:
            reader.start()
        port_queue.put("go")
        start = time.perf_counter()
        for reader in readers:
            reader.join(600)
        elapsed = time.perf_counter() - start
        done.set()
        disconnects = sum(channel.statistics().disconnects for channel in channels)
        result_queue.put({
            "side": "receiver", "threads": threads, "idle_cpu_s_per_s": (after["cpu"] - before["cpu"]) / seconds,
            "idle_rss_mb": before["rss_mb"], "messages": sum(got), "elapsed": elapsed, "disconnects": disconnects,
            **_usage(),
        })


def many_clients(port: int, port_queue: Any, result_queue: Any, sessions: int, per_session: int) -> None:
    import threading

    import reliable_tcp

    channels = [reliable_tcp.connect(("127.0.0.1", port), timeout=120) for _ in range(sessions)]
    assert port_queue.get(timeout=120) == "ready"
    assert port_queue.get(timeout=600) == "go"
    payload = b"x" * 64

    disconnects = [0] * len(channels)

    def send(index: int, channel: Any) -> None:
        batch = [payload] * 256
        for _ in range(per_session // 256):
            channel.send_many(batch)
        disconnects[index] = channel.statistics().disconnects
        channel.close(timeout=120)

    senders = [threading.Thread(target=send, args=(i, c), daemon=True) for i, c in enumerate(channels)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(600)
    result_queue.put({"side": "sender", "disconnects": sum(disconnects), **_usage()})


def run_many(
    sessions: int, idle_seconds: float, per_session: int, server_part: Callable[..., None] = many_server,
    client_part: Callable[..., None] = many_clients,
) -> dict[str, Any]:
    context = mp.get_context("spawn")
    port_queue, client_queue, result_queue = context.Queue(), context.Queue(), context.Queue()
    server = context.Process(target=server_part, args=(port_queue, result_queue, sessions, idle_seconds))
    server.start()
    port = port_queue.get(timeout=30)
    client = context.Process(target=client_part, args=(port, client_queue, result_queue, sessions, per_session))
    client.start()
    client_queue.put(port_queue.get(timeout=300))  # "ready"
    client_queue.put(port_queue.get(timeout=600))  # "go"
    both = _gather(result_queue, (server, client), timeout=900, join=60)
    rx, tx = both["receiver"], both["sender"]
    return {
        "sessions": sessions,
        "server_threads": rx["threads"],
        "idle_cpu_percent": 100 * rx["idle_cpu_s_per_s"],
        "idle_rss_mb": rx["idle_rss_mb"],
        "aggregate_msgs_per_s": rx["messages"] / rx["elapsed"],
        "disconnects": rx["disconnects"] + tx["disconnects"],
    }


# ------------------------------------------------------------------- recovery


def run_recovery(count: int) -> dict[str, Any]:
    """Messages sent into a blackhole, then the link heals: how fast does the replay drain?"""
    import threading

    import reliable_tcp
    from reliable_tcp.testing import FaultProxy

    options = {"heartbeat_interval": 0.2, "window_messages": count + 10, "window_bytes": 256 << 20}
    with reliable_tcp.listen(("127.0.0.1", 0), **options) as listener, FaultProxy(listener.address) as proxy:
        client = reliable_tcp.connect(proxy.address, **options)
        server = listener.accept(timeout=10)
        resumed = threading.Event()
        proxy.blackhole()
        client.send_many([b"r" * 64] * count)
        while client.statistics().disconnects == 0:
            time.sleep(0.01)  # waiting for the dead verdict
        proxy.heal()
        start = time.perf_counter()
        got = 0
        while got < count:
            got += len(server.recv_many(8192))
        elapsed = time.perf_counter() - start
        resumed.set()
        replayed = client.statistics().retransmitted
        client.close()
        server.close()
    return {"messages": count, "seconds_after_heal": elapsed, "msgs_per_s": count / elapsed, "replayed": replayed}


# -------------------------------------------------------------------- harness


@dataclass(frozen=True)
class Interpreter:
    """Where a side runs: an interpreter and the import path it finds
    reliable_tcp on (None: this process's own)."""

    executable: str
    sys_path: list[str] | None = None

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """While processes are started: spawn them with this interpreter."""
        if self.sys_path is None:
            yield
            return
        os.environ[_CHILD_PATH] = json.dumps(self.sys_path)
        mp.set_executable(self.executable)
        try:
            yield
        finally:
            mp.set_executable(sys.executable)
            del os.environ[_CHILD_PATH]


THIS_INTERPRETER = Interpreter(sys.executable)


def _run_pair(server: Callable[..., None], client: Callable[..., None], count: int, size: int,
              interpreter: Interpreter = THIS_INTERPRETER, **server_kwargs: Any) -> dict[str, Any]:
    context = mp.get_context("spawn")
    port_queue, result_queue = context.Queue(), context.Queue()
    server_proc = context.Process(target=server, args=(port_queue, result_queue, count, size), kwargs=server_kwargs)
    with interpreter.starting():
        server_proc.start()
    port = port_queue.get(timeout=30)
    client_proc = context.Process(target=client, args=(port, result_queue, count, size))
    with interpreter.starting():
        client_proc.start()
    return _gather(result_queue, (server_proc, client_proc), timeout=600, join=30)


@dataclass(frozen=True, eq=False)
class _Job:
    """One transport at one size, measured once per repetition."""

    name: str  # the row's name, COMPILED_SUFFIX included
    size: int
    count: int
    server: Callable[..., None]
    client: Callable[..., None]
    interpreter: Interpreter = THIS_INTERPRETER
    server_kwargs: dict[str, Any] = field(default_factory=dict)

    def run(self) -> dict[str, Any]:
        return _run_pair(self.server, self.client, self.count, self.size, self.interpreter, **self.server_kwargs)


def _measure_stream(job: _Job) -> dict[str, float]:
    """One one-way run: the receiver's rate, each side's CPU per message and peak RSS."""
    pair = job.run()
    rx, tx = pair["receiver"], pair["sender"]
    rate = rx["messages"] / rx["elapsed"] if rx["elapsed"] > 0 else float("nan")
    return {
        "msgs_per_s": rate,
        "mb_per_s": rate * job.size / 1e6,
        "cpu_us_per_msg_sender": 1e6 * tx["cpu"] / job.count,
        "cpu_us_per_msg_receiver": 1e6 * rx["cpu"] / job.count,
        "rss_mb_sender": tx["rss_mb"],
        "rss_mb_receiver": rx["rss_mb"],
    }


def _gather(result_queue: Any, procs: tuple[Any, ...], *, timeout: float, join: float) -> dict[str, Any]:
    """Both sides' results by side ("sender", "receiver"), then end both processes."""
    results = {}
    for _ in procs:
        item = result_queue.get(timeout=timeout)
        results[item.pop("side")] = item
    for proc in procs:
        proc.join(join)
        if proc.is_alive():
            proc.kill()
    return results


ONEWAY: dict[str, tuple[Callable[..., None], Callable[..., None]]] = {
    "raw TCP (batched)": (raw_receiver, raw_sender),
    "bare threads (no protocol)": (bare_receiver, bare_sender),  # our threads and queues, nothing else
    "reliable_tcp send_many": (rt_receiver, rt_sender),
    "reliable_tcp send": (rt_receiver_single, rt_sender_single),  # one send() and one recv() per message
    "pyzmq PUSH/PULL": (zmq_receiver, zmq_sender),
    "websockets (threads)": (ws_receiver, ws_sender),  # one send()/recv() per message, binary, no compression
    "paho-mqtt QoS 1": (mqtt_receiver, mqtt_sender),
    "asyncio streams (raw)": (aio.streams_receiver, aio.streams_sender),  # one write+drain per message
    "reliable_tcp.asyncio send": (aio.aio_receiver, aio.aio_sender),  # one await send()/recv() per message
}
PINGPONG = {
    "raw TCP (batched)": (raw_echo_server, raw_ping_client),
    "bare threads (no protocol)": (bare_echo_server, bare_ping_client),
    "reliable_tcp send": (rt_echo_server, rt_ping_client),
    "pyzmq REQ/REP": (zmq_rep_server, zmq_req_client),
    "websockets (threads)": (ws_echo_server, ws_ping_client),
    "asyncio streams (raw)": (aio.streams_echo_server, aio.streams_ping_client),
    "reliable_tcp.asyncio send": (aio.aio_echo_server, aio.aio_ping_client),
}


def _available(name: str) -> str | None:
    if name.startswith("pyzmq"):
        try:
            import zmq  # noqa: F401
        except ImportError:
            return "pyzmq not installed (pip install -e '.[bench]')"
    if name.startswith("websockets"):
        try:
            import websockets.sync.client  # noqa: F401
        except ImportError:
            return "websockets not installed (pip install -e '.[bench]')"
    if name.startswith("paho"):
        try:
            import paho.mqtt.client  # noqa: F401
        except ImportError:
            return "paho-mqtt not installed (pip install -e '.[bench]')"
        if shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"):
            return "mosquitto not installed (apt-get install mosquitto)"
    return None


class _Mosquitto:
    """A private mosquitto broker on a free port, with persistence off."""

    def __init__(self) -> None:
        with socket.create_server(("127.0.0.1", 0)) as probe:
            self.port = probe.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="bench-mosquitto-")
        config = os.path.join(self.dir, "mosquitto.conf")
        with open(config, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 1000\n"
                    "max_queued_messages 0\n")
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)  # polling until the broker listens
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _median_spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs, 2 repetitions (about a minute)")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (default 5, quick 2)")
    parser.add_argument("--seconds", type=float, default=None, help="target seconds per run (default 2, quick 0.5)")
    parser.add_argument("--only", default="", help="comma-separated transport name prefixes to run")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--json", default="bench-results.json", help="where to write the results")
    parser.add_argument("--chart", default="", help="also draw throughput by message size as an SVG here")
    parser.add_argument("--installed", action="store_true", help="measure the installed reliable_tcp, not the checkout's")
    parser.add_argument(
        "--compiled", default="", metavar="PYTHON|build",
        help="also measure the compiled build: the reliable_tcp transports run under PYTHON too (an interpreter "
             "with `RELIABLE_TCP_COMPILE=1 pip install .` done), or under a venv this run builds ('build', ~1 min), "
             "in the same rounds as the rest")
    args = parser.parse_args()
    import reliable_tcp

    build = "compiled" if reliable_tcp.COMPILED else "pure"
    repeat = args.repeat or (2 if args.quick else 5)
    seconds = args.seconds or (0.5 if args.quick else 2.0)
    sizes = [int(s) for s in args.sizes.split(",")]
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "build": build,
        "repeat": repeat,
        "oneway": {},
        "latency": {},
    }
    broker: _Mosquitto | None = None
    print(f"reliable_tcp benchmark ({build} build at {os.path.dirname(reliable_tcp.__file__)}): "
          f"{repeat} repetitions, ~{seconds} s each, sizes {sizes}", flush=True)
    with contextlib.ExitStack() as stack:
        builds = [("", THIS_INTERPRETER)]
        if args.compiled:
            builds.append((COMPILED_SUFFIX, stack.enter_context(_compiled_interpreter(args.compiled))))
            results["compiled_python"] = builds[-1][1].executable
        oneway_jobs: list[_Job] = []
        ping_jobs: list[_Job] = []
        for name, (server, client) in ONEWAY.items():
            if wanted and not any(name.startswith(w) for w in wanted):
                continue
            reason = _available(name)
            if reason:
                print(f"  skipping {name}: {reason}", flush=True)
                continue
            kwargs = {}
            if name.startswith("paho"):
                if broker is None:
                    broker = _Mosquitto()
                    stack.callback(broker.stop)
                kwargs["broker_port"] = broker.port
            for suffix, interpreter in builds:
                if suffix and not name.startswith("reliable_tcp"):
                    continue  # the peers are the baseline for both builds
                for size in sizes:
                    count = _count_for(size, seconds)
                    if name.startswith("paho"):
                        count = min(count, 20_000 if not args.quick else 5_000)
                    oneway_jobs.append(_Job(name + suffix, size, count, server, client, interpreter, kwargs))
        for name, (server, client) in PINGPONG.items():
            if wanted and not any(name.startswith(w) for w in wanted):
                continue
            for suffix, interpreter in builds:
                if not suffix or name.startswith("reliable_tcp"):
                    ping_jobs.append(_Job(name + suffix, 64, 1000 if args.quick else 5000, server, client, interpreter))
        # Round robin: each repetition measures every transport once, so
        # that a drift of the machine's speed during the run (it happens:
        # pyzmq's own figure moved by a third between runs of one hour)
        # falls on every transport alike, and the ratios stay fair.
        oneway_runs: dict[_Job, list[dict[str, float]]] = {job: [] for job in oneway_jobs}
        ping_runs: dict[_Job, list[list[float]]] = {job: [] for job in ping_jobs}
        for rep in range(repeat):
            print(f"  repetition {rep + 1} of {repeat}: {len(oneway_jobs)} streams, {len(ping_jobs)} round trips",
                  flush=True)
            for job in oneway_jobs:
                oneway_runs[job].append(_measure_stream(job))
            for job in ping_jobs:
                ping_runs[job].append(sorted(job.run()["sender"]["rtts"]))
        for job, stream_runs in oneway_runs.items():
            summary = {key: _median_spread([r[key] for r in stream_runs]) for key in stream_runs[0]}
            results["oneway"].setdefault(job.name, {})[str(job.size)] = {
                "count": job.count, **summary,
                # each repetition's figure, in the order of the rounds (for paired ratios)
                "msgs_per_s_runs": [r["msgs_per_s"] for r in stream_runs],
                "mb_per_s_runs": [r["mb_per_s"] for r in stream_runs],
            }
            m, lo, hi = summary["msgs_per_s"]
            print(f"  {job.name:<24} {job.size:>6} B  {m:>11,.0f} msg/s ({lo:,.0f}-{hi:,.0f})  "
                  f"{summary['mb_per_s'][0]:>8.1f} MB/s", flush=True)
        for job, rtt_runs in ping_runs.items():
            p50s = [rtts[len(rtts) // 2] * 1e6 for rtts in rtt_runs]
            p99s = [rtts[int(len(rtts) * 0.99)] * 1e6 for rtts in rtt_runs]
            results["latency"][job.name] = {"p50_us": _median_spread(p50s), "p99_us": _median_spread(p99s),
                                            "count": job.count, "p50_us_runs": p50s}
            print(f"  {job.name:<24} round trip 64 B: p50 {statistics.median(p50s):.1f} us, "
                  f"p99 {statistics.median(p99s):.1f} us", flush=True)
        if not wanted or "many" in wanted:
            sessions = 200 if args.quick else 1000
            runs = [run_many(sessions, 5.0 if args.quick else 10.0, 2560 if args.quick else 10240) for _ in range(repeat)]
            many = dict(runs[-1])
            many["aggregate_msgs_per_s"] = _median_spread([r["aggregate_msgs_per_s"] for r in runs])
            many["disconnects"] = sum(r["disconnects"] for r in runs)
            many["runs"] = len(runs)
            results["many_sessions"] = many
            m, lo, hi = many["aggregate_msgs_per_s"]
            print(f"  many sessions: {many['sessions']} idle sessions, server {many['server_threads']} threads, "
                  f"{many['idle_cpu_percent']:.1f}% CPU idle, {many['idle_rss_mb']:.0f} MB RSS; "
                  f"all sending at once: {m:,.0f} msg/s ({lo:,.0f}-{hi:,.0f} over {len(runs)} runs), "
                  f"{many['disconnects']} disconnects", flush=True)
        if not wanted or "asyncio-many" in wanted:
            sessions = 1000 if args.quick else 10_000
            runs = [run_many(sessions, 5.0 if args.quick else 10.0, 512, aio.aio_many_server, aio.aio_many_clients)
                    for _ in range(1 if args.quick else 3)]
            many = dict(runs[-1])
            many["idle_rss_mb"] = max(r["idle_rss_mb"] for r in runs)
            many["idle_cpu_percent"] = max(r["idle_cpu_percent"] for r in runs)
            many["aggregate_msgs_per_s"] = _median_spread([r["aggregate_msgs_per_s"] for r in runs])
            many["disconnects"] = sum(r["disconnects"] for r in runs)
            many["runs"] = len(runs)
            results["asyncio_many_sessions"] = many
            m, lo, hi = many["aggregate_msgs_per_s"]
            print(f"  asyncio many sessions: {many['sessions']} idle sessions, server {many['server_threads']} threads, "
                  f"{many['idle_cpu_percent']:.1f}% CPU idle, {many['idle_rss_mb']:.0f} MB RSS (worst of {len(runs)} runs); "
                  f"all sending at once: {m:,.0f} msg/s ({lo:,.0f}-{hi:,.0f}), {many['disconnects']} disconnects",
                  flush=True)
        if not wanted or "asyncio-detection" in wanted:
            detection = aio.detection_under_load(50 if args.quick else 200, 3 if args.quick else 5)
            results["asyncio_detection"] = detection
            worst = max(detection["detections_s"])
            print(f"  asyncio dead-link detection with {detection['busy_sessions']} busy sessions on the loop: "
                  f"worst {worst:.2f} s of {len(detection['detections_s'])} (dead_after {detection['dead_after_s']} s)",
                  flush=True)
        if not wanted or "recovery" in wanted:
            recovery = run_recovery(50_000 if args.quick else 200_000)
            results["recovery"] = recovery
            print(f"  recovery: {recovery['messages']} messages replayed in {recovery['seconds_after_heal']:.2f} s "
                  f"after the heal ({recovery['msgs_per_s']:,.0f} msg/s)", flush=True)
    _print_table(results)
    _print_targets(results)
    if args.chart:
        _write_chart(results, args.chart)
        print(f"chart written to {args.chart}")
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nresults written to {args.json}")
    return 0


@contextlib.contextmanager
def _compiled_interpreter(python: str) -> Iterator[Interpreter]:
    """The interpreter the compiled build's sides run under: ``python`` (one
    with `RELIABLE_TCP_COMPILE=1 pip install .` done), or with "build" a
    venv built for this run and removed after it."""
    built = ""
    if python == "build":
        built = tempfile.mkdtemp(prefix="bench-compiled-")
        python = os.path.join(built, "venv", "bin", "python")
        print("  building the compiled build in a venv of its own ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", os.path.join(built, "venv")], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", ROOT], check=True, env={**os.environ, "RELIABLE_TCP_COMPILE": "1"})
    try:
        # Its import path as it starts outside the checkout (PYTHONSAFEPATH:
        # not even the current directory), and what it finds there.
        probe = "import json, sys, reliable_tcp; print(json.dumps([reliable_tcp.COMPILED, reliable_tcp.__file__, sys.path]))"
        found = subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True,
                               env={**os.environ, "PYTHONSAFEPATH": "1"}, cwd=tempfile.gettempdir())
        compiled, where, path = json.loads(found.stdout)
        if not compiled:
            raise SystemExit(f"--compiled {python}: that interpreter's reliable_tcp ({where}) is the pure build")
        print(f"  compiled build: {os.path.dirname(where)}", flush=True)
        yield Interpreter(python, path)
    finally:
        if built:
            shutil.rmtree(built, ignore_errors=True)


class _Ratio(float):
    """A ratio of two medians from one run, with the lowest and highest of
    the ratios the repetitions give pair by pair (the round robin pairs them
    in time): how far the machine's noise moves it."""

    per_repetition: tuple[float, float] | None = None

    @classmethod
    def of(cls, ours: dict[str, Any], base: dict[str, Any], key: str) -> _Ratio:
        ratio = cls(ours[key][0] / base[key][0])
        ours_runs, base_runs = ours.get(key + "_runs"), base.get(key + "_runs")
        if ours_runs and base_runs and len(ours_runs) == len(base_runs):
            pairs = [a / b for a, b in zip(ours_runs, base_runs, strict=True)]
            ratio.per_repetition = (min(pairs), max(pairs))
        return ratio


def _ratio(results: dict[str, Any], name: str, size: int, base: str, key: str = "msgs_per_s") -> _Ratio | None:
    oneway = results["oneway"]
    try:
        return _Ratio.of(oneway[name][str(size)], oneway[base][str(size)], key)
    except KeyError:
        return None


COMPILED_SUFFIX = " [compiled]"


def _print_targets(results: dict[str, Any]) -> None:
    """The targets of issue 26, each a ratio from this run, marked PASS or short.

    The compiled build's rows carry COMPILED_SUFFIX; where the run has no
    compiled build, its targets are checked on the pure build and say so.
    """
    rows: list[tuple[str, float | None, str, bool | None]] = []
    oneway, latency = results["oneway"], results["latency"]

    def add(label: str, value: float | None, goal: str, ok: bool | None) -> None:
        rows.append((label, value, goal, ok))

    def at_least(label: str, value: float | None, goal: float) -> None:
        add(label, value, f">= {goal}", None if value is None else value >= goal)

    def at_most(label: str, value: float | None, goal: float, *, strictly: bool = False) -> None:
        ok = None if value is None else (value < goal if strictly else value <= goal)
        add(label, value, f"{'<' if strictly else '<='} {goal}", ok)

    def p50_ratio(name: str, base: str) -> _Ratio | None:
        if name not in latency or base not in latency:
            return None
        return _Ratio.of(latency[name], latency[base], "p50_us")

    best = "reliable_tcp send" + (COMPILED_SUFFIX if "reliable_tcp send" + COMPILED_SUFFIX in oneway else "")
    if best.endswith(COMPILED_SUFFIX):
        tag = "compiled"
    elif results["build"] == "compiled":
        tag = "compiled (--installed)"  # this interpreter's own build is the compiled one
    else:
        tag = "pure (no compiled build in this run)"
    for size in (64, 1024):
        at_least(f"{tag}: send()+recv() {size} B, x pyzmq PUSH/PULL", _ratio(results, best, size, "pyzmq PUSH/PULL"), 1.0)
        if best != "reliable_tcp send":
            pure = _ratio(results, "reliable_tcp send", size, "pyzmq PUSH/PULL")
            at_least(f"pure: send()+recv() {size} B, x pyzmq PUSH/PULL", pure, 0.7)
    for base, goal in (("websockets (threads)", 1.0), ("raw TCP (batched)", 0.6)):
        at_least(f"{tag}: send() 64 KiB MB/s, x {base}", _ratio(results, best, 65536, base, "mb_per_s"), goal)
    at_most(f"{tag}: 64 B round trip p50, x websockets (threads)", p50_ratio(best, "websockets (threads)"), 1.0, strictly=True)
    at_most(f"{tag}: 64 B round trip p50, x pyzmq REQ/REP", p50_ratio(best, "pyzmq REQ/REP"), 1.5)
    # What the threads alone cost: the protocol's share is what exceeds these.
    bare = "bare threads (no protocol)"
    add(f"{tag}: 64 B round trip p50, x {bare}", p50_ratio(best, bare), "report", None)
    add(f"{bare}: 64 B round trip p50, x pyzmq REQ/REP", p50_ratio(bare, "pyzmq REQ/REP"), "report", None)
    for size in (64, 1024):
        add(f"{tag}: send()+recv() {size} B, x {bare}", _ratio(results, best, size, bare), "report", None)
    for name in ("reliable_tcp send_many", "reliable_tcp send_many" + COMPILED_SUFFIX):
        for size in (64, 1024, 65536):
            if name in oneway and str(size) in oneway[name]:
                add(f"{name}, {size} B, msg/s", oneway[name][str(size)]["msgs_per_s"][0], "report", None)
    many = results.get("many_sessions")
    if many:
        m, lo, hi = many["aggregate_msgs_per_s"]
        spread = (hi - lo) / m if m else float("nan")
        add(f"{many['sessions']} sessions sending at once, spread over {many['runs']} runs", spread, "<= 0.25", spread <= 0.25)
        add("  ... disconnects during those runs", float(many["disconnects"]), "== 0", many["disconnects"] == 0)
        add(f"  ... {many['sessions']} idle threaded sessions, CPU % of a core", many["idle_cpu_percent"], "report", None)
    for size in (64, 1024, 65536):
        value = _ratio(results, "reliable_tcp.asyncio send", size, "asyncio streams (raw)")
        add(f"asyncio send()+recv() {size} B, x raw asyncio streams", value, "report", None)
        value = _ratio(results, "reliable_tcp.asyncio send", size, "reliable_tcp send")
        add(f"asyncio send()+recv() {size} B, x threaded send()", value, "report", None)
    value = p50_ratio("reliable_tcp.asyncio send", "asyncio streams (raw)")
    if value is not None:
        add("asyncio 64 B round trip p50, x raw asyncio streams", value, "report", None)
    amany = results.get("asyncio_many_sessions")
    if amany:
        add(f"asyncio {amany['sessions']} idle sessions, RSS MB", amany["idle_rss_mb"], "< 1024", amany["idle_rss_mb"] < 1024)
        add("  ... idle CPU, % of a core", amany["idle_cpu_percent"], "< 10", amany["idle_cpu_percent"] < 10)
        add("  ... disconnects while all send at once", float(amany["disconnects"]), "== 0", amany["disconnects"] == 0)
    detection = results.get("asyncio_detection")
    if detection:
        # The session is watched through a proxy, a relay: its kernel acknowledges
        # our bytes after the peer is gone, which earns the verdict one interval
        # of grace (protocol.md 6.1). The loop delays the verdict by its own lag
        # (measured in the same rounds by 5 ms polls), and the disconnected
        # event that times it runs on the loop's next turn (call_soon), which
        # can lag as much again; 10 ms for the polls and the timer slots.
        worst = max(detection["detections_s"])
        goal = detection["dead_after_s"] + detection["heartbeat_s"] + 2 * detection["loop_lag_max_s"] + 0.01
        add("asyncio detection on a busy loop (behind a relay), worst s", worst, f"<= {goal:.2f}", worst <= goal)
        add("  ... dead_after + one interval, without the loop's lag", detection["dead_after_s"] + detection["heartbeat_s"],
            "report", None)
        add("  ... the loop's lag meanwhile, worst s", detection["loop_lag_max_s"], "report", None)
    print("\ntargets (ratios from this run; in brackets the range of the repetitions' own ratios)")
    for label, figure, goal, ok in rows:
        shown = "-" if figure is None else (f"{figure:,.0f}" if figure >= 1000 else f"{figure:.2f}")
        mark = "n/a" if ok is None else ("PASS" if ok else "short")
        spread = getattr(figure, "per_repetition", None)
        shown_spread = f"({spread[0]:.2f}-{spread[1]:.2f})" if spread else ""
        print(f"  {label:<62} {shown:>10} {shown_spread:<11}  goal {goal:<7} {mark}")
    results["targets"] = [{"target": l, "value": v, "per_repetition": getattr(v, "per_repetition", None),
                           "goal": g, "pass": o} for l, v, g, o in rows]


def _print_table(results: dict[str, Any]) -> None:
    oneway = results["oneway"]
    raw = oneway.get("raw TCP (batched)", {})
    print("\nOne-way throughput (median of runs; ratio to raw TCP from this run)")
    print(f"{'transport':<24} {'size':>6} {'msg/s':>12} {'MB/s':>9} {'x raw':>7} {'cpu us/msg tx/rx':>18} {'RSS MB tx/rx':>14}")
    for name, by_size in oneway.items():
        for size, row in by_size.items():
            base = raw.get(size, {}).get("msgs_per_s", (float("nan"),))[0]
            ratio = row["msgs_per_s"][0] / base if base == base and base else float("nan")
            print(
                f"{name:<24} {size:>6} {row['msgs_per_s'][0]:>12,.0f} {row['mb_per_s'][0]:>9.1f} {ratio:>7.2f} "
                f"{row['cpu_us_per_msg_sender'][0]:>8.2f}/{row['cpu_us_per_msg_receiver'][0]:<8.2f} "
                f"{row['rss_mb_sender'][0]:>6.0f}/{row['rss_mb_receiver'][0]:<6.0f}"
            )
    if results["latency"]:
        raw_p50 = results["latency"].get("raw TCP (batched)", {}).get("p50_us", (float("nan"),))[0]
        print("\nRound trip, 64 B")
        for name, row in results["latency"].items():
            ratio = row["p50_us"][0] / raw_p50
            print(f"{name:<24} p50 {row['p50_us'][0]:8.1f} us  p99 {row['p99_us'][0]:8.1f} us  x raw p50 {ratio:5.2f}")


def _write_chart(results: dict[str, Any], path: str) -> None:
    """Grouped bars of messages/s by message size, one colour per transport
    (log scale), drawn with matplotlib (the ``bench`` extra); the file's
    extension picks the format (.svg, .png, .pdf)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no screen: draw to the file only
        import matplotlib.pyplot as plt
    except ImportError:
        print("chart skipped: matplotlib not installed (pip install -e '.[bench]')")
        return
    oneway = results["oneway"]
    names = list(oneway)
    sizes = sorted({int(size) for rows in oneway.values() for size in rows})
    figure, axes = plt.subplots(figsize=(11, 5.5))
    width = 0.85 / max(1, len(names))
    bases = list(dict.fromkeys(name.removesuffix(COMPILED_SUFFIX) for name in names))  # a build's bars share a colour
    for i, name in enumerate(names):
        xs = [g + (i - (len(names) - 1) / 2) * width for g, size in enumerate(sizes) if str(size) in oneway[name]]
        ys = [oneway[name][str(size)]["msgs_per_s"][0] for size in sizes if str(size) in oneway[name]]
        hatch = "//" if name.endswith(COMPILED_SUFFIX) else None
        colour = plt.get_cmap("tab10")(bases.index(name.removesuffix(COMPILED_SUFFIX)) % 10)
        axes.bar(xs, ys, width, label=name, hatch=hatch, color=colour, edgecolor="white" if hatch else colour)
    axes.set_yscale("log")
    axes.set_xticks(range(len(sizes)), [f"{size:,} B" for size in sizes])
    axes.set_ylabel("messages/s at the receiver (log scale)")
    axes.set_title(f"One-way throughput, one call per message unless named, {results['date']}")
    axes.grid(axis="y", which="major", alpha=0.3)
    axes.legend(fontsize="small", ncols=2)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
