"""Soak: long two-way streams while random faults of every kind hit the link.

Bounded by default (``RTCP_SOAK_SECONDS``, 40 s per configuration, two
configurations): CI survives well over 200 faults with zero anomalies.
Reports throughput under faults and the distribution of detection and
recovery times (printed; ``-s`` shows them).
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time

import pytest

import reliable_tcp as rt
from helpers import UNIT, Worker, fast_options, wait_for
from reliable_tcp.testing.checker import check_stream
from reliable_tcp.testing import FaultProxy

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("RTCP_SOAK_SECONDS", "40"))
#: Faults each configuration must survive (CI's two configurations: over 200 in all).
MIN_FAULTS = int(os.environ.get("RTCP_SOAK_MIN_FAULTS", str(int(SECONDS * 2))))
KINDS = ("blackhole", "reset", "reset-client", "reset-server", "close", "slicer", "latency")


def _numbers(messages: list[bytes]) -> list[int]:
    return [int(m) for m in messages]


@pytest.mark.parametrize(("heartbeat", "seed"), [(0.1, 1), (0.2, 2)])
@pytest.mark.timeout(int(SECONDS * 3 + 120))
def test_soak_random_faults(heartbeat: float, seed: int) -> None:
    rng = random.Random(seed)
    options = fast_options(heartbeat_interval=heartbeat * UNIT, dead_after=3 * heartbeat * UNIT, window_messages=2048)
    marks: dict[str, list[float]] = {"disconnected": [], "resumed": []}
    lock = threading.Lock()

    def on_event(event: rt.ChannelEvent) -> None:
        with lock:
            if event.kind in marks:
                marks[event.kind].append(time.monotonic())

    with rt.listen(("127.0.0.1", 0), **options) as listener, FaultProxy(listener.address, seed=seed) as proxy:
        client = rt.connect(proxy.address, on_event=on_event, **options)
        server = listener.accept(timeout=10)
        stop = threading.Event()
        sent = {"up": 0, "down": 0}
        delivered: dict[str, list[bytes]] = {"up": [], "down": []}

        def produce(channel: rt.Channel, direction: str) -> None:
            number = 0
            while not stop.is_set():
                batch = [b"%d" % n for n in range(number, number + 200)]
                channel.send_many(batch, timeout=60 * UNIT)
                number += len(batch)
                sent[direction] = number

        def consume(channel: rt.Channel, direction: str) -> None:
            target = delivered[direction]
            try:
                while True:
                    target.extend(channel.recv_many(4096))
            except rt.ChannelClosed:
                return

        workers = [
            Worker(lambda: produce(client, "up"), "soak-up"),
            Worker(lambda: produce(server, "down"), "soak-down"),
            Worker(lambda: consume(server, "up"), "soak-recv-up"),
            Worker(lambda: consume(client, "down"), "soak-recv-down"),
        ]
        for worker in workers:
            worker.start()
        faults: list[tuple[str, float, float]] = []  # kind, start, back
        started = time.monotonic()
        while time.monotonic() - started < SECONDS * UNIT:
            kind = rng.choice(KINDS)
            begin = time.monotonic()
            resumes_before = client.statistics().resumes
            if kind == "blackhole":
                proxy.blackhole()
                time.sleep(rng.uniform(3, 6) * heartbeat * UNIT)  # the outage's length is the stimulus
                proxy.heal()
            elif kind == "reset":
                proxy.reset()
            elif kind == "reset-client":
                proxy.reset(side="client")
            elif kind == "reset-server":
                proxy.reset(side="server")
            elif kind == "close":
                proxy.close_connections()
            elif kind == "slicer":
                proxy.set_faults("both", slice_size=7)
                time.sleep(0.3 * UNIT)
                proxy.heal()
            else:
                proxy.set_faults("both", latency=heartbeat / 2, jitter=heartbeat / 4)
                time.sleep(0.3 * UNIT)
                proxy.heal()
            back = time.monotonic()
            faults.append((kind, begin, back))
            # Wait for the recovery from every fault that breaks connections (a
            # blackhole shorter than dead_after may pass unnoticed, which is fine).
            if kind not in ("slicer", "latency", "blackhole"):
                wait_for(lambda: client.statistics().resumes > resumes_before, 30, f"recovery from {kind}")  # noqa: B023
            time.sleep(rng.uniform(0.02, 0.08) * UNIT)  # healthy traffic between faults
        elapsed = time.monotonic() - started
        stop.set()
        for worker in workers[:2]:
            worker.result(120)
        client.flush(timeout=60)
        server.flush(timeout=60)
        client.close(timeout=30)
        for worker in workers[2:]:
            worker.result(60)
        server.close(timeout=10)

    up = check_stream(list(range(sent["up"])), range(sent["up"]), _numbers(delivered["up"]))
    down = check_stream(list(range(sent["down"])), range(sent["down"]), _numbers(delivered["down"]))
    assert up.ok and down.ok, (up.summary(), down.summary())
    assert up.delivered == sent["up"] and down.delivered == sent["down"]
    disruptive = [f for f in faults if f[0] not in ("slicer", "latency")]
    detection = []
    recovery = []
    for _, begin, back in disruptive:
        after = [t for t in marks["disconnected"] if t >= begin]
        resumed = [t for t in marks["resumed"] if t >= back]
        if after:
            detection.append(after[0] - begin)
        if resumed:
            recovery.append(resumed[0] - back)
    stats = client.statistics()
    print(
        f"\nsoak heartbeat {heartbeat}s: {len(faults)} faults ({len(disruptive)} disruptive) in {elapsed:.0f} s, "
        f"{stats.resumes} resumes; {sent['up'] + sent['down']} messages, "
        f"{(sent['up'] + sent['down']) / elapsed:,.0f} msg/s under faults; "
        f"detection p50 {statistics.median(detection):.3f} s max {max(detection):.3f} s; "
        f"recovery p50 {statistics.median(recovery):.3f} s max {max(recovery):.3f} s; {up.summary()}"
    )
    assert len(faults) >= MIN_FAULTS
    assert stats.resumes >= len(disruptive) * 0.8
