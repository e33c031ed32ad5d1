"""The demo behind ``rtcat demo``: the promise, shown and checked in one process.

A listener, a client and a fault proxy between them; numbered messages
stream both ways while the proxy pulls the cable (blackhole), resets and
closes the link, round after round. Progress goes to stderr; the tally at
the end is verified, and the exit status is non-zero on any anomaly.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..common.status import ChannelEvent, EventKind
from ..exceptions import ChannelClosed, SessionLost
from ..sync.channel import Channel
from ..sync.client import connect
from ..sync.server import listen
from ..testing.checker import Tally, check_stream
from ..testing.proxy import FaultProxy

__all__ = ["run_demo", "add_arguments", "main"]

logger = logging.getLogger(__name__)

FAULT_KINDS = ("blackhole", "reset", "close")


@dataclass
class _Side:
    """One end's view: what it sent, what was acknowledged, what arrived."""

    name: str
    sent: list[int] = field(default_factory=list)
    delivered: list[int] = field(default_factory=list)
    unacked: set[int] = field(default_factory=set)
    disconnected_at: float | None = None
    resumed_at: float | None = None


class _Timeline:
    """Timestamps of state changes, for detection and recovery times."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.disconnected: dict[str, list[float]] = {"client": [], "server": []}
        self.resumed: dict[str, list[float]] = {"client": [], "server": []}

    def observer(self, side: str) -> Callable[[ChannelEvent], None]:
        def on_event(event: ChannelEvent) -> None:
            with self.lock:
                if event.kind is EventKind.DISCONNECTED:
                    self.disconnected[side].append(time.monotonic())
                elif event.kind is EventKind.RESUMED:
                    self.resumed[side].append(time.monotonic())
                self.changed.notify_all()

        return on_event

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self.lock:
            return self.changed.wait_for(predicate, timeout)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options (shared by ``rtcat demo`` and ``python -m reliable_tcp.cli.demo``)."""
    parser.add_argument("--rounds", type=int, default=2, help="rounds of faults (default 2)")
    parser.add_argument(
        "--faults", default=",".join(FAULT_KINDS), help=f"comma-separated fault kinds from {', '.join(FAULT_KINDS)}"
    )
    parser.add_argument("--outage", type=float, default=1.5, help="seconds a blackhole lasts (default 1.5)")
    parser.add_argument("--rate", type=float, default=2000.0, help="messages per second each way (default 2000)")
    parser.add_argument("--heartbeat", type=float, default=0.2, help="heartbeat interval in seconds (default 0.2)")
    parser.add_argument("--seed", type=int, default=None, help="fault proxy seed (printed)")


def run_demo(
    *,
    rounds: int = 2,
    faults: tuple[str, ...] = FAULT_KINDS,
    outage: float = 1.5,
    rate: float = 2000.0,
    heartbeat: float = 0.2,
    seed: int | None = None,
    out: TextIO = sys.stderr,
) -> tuple[Tally, Tally, int]:
    """Run the demo; return the tallies (client to server, server to client)
    and how many outages were survived."""
    for kind in faults:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
    options: dict[str, Any] = {"heartbeat_interval": heartbeat, "resume_window": 60.0, "handshake_timeout": max(1.0, 5 * heartbeat)}
    timeline = _Timeline()
    up, down = _Side("client"), _Side("server")
    stop = threading.Event()

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    with listen(("127.0.0.1", 0), on_event=timeline.observer("server"), **options) as listener, FaultProxy(
        listener.address, seed=seed
    ) as proxy:
        say(f"demo: listener on {listener.address[1]}, fault proxy on {proxy.address[1]} (seed {proxy.seed})")
        # Both ends are on this machine: a proxy from the environment can't reach them.
        client = connect(proxy.address, proxy=False, on_event=timeline.observer("client"), **options)
        server = listener.accept(timeout=10)
        workers = [
            threading.Thread(target=_produce, args=(client, up, rate, stop), name="demo-send-up"),
            threading.Thread(target=_produce, args=(server, down, rate, stop), name="demo-send-down"),
            threading.Thread(target=_consume, args=(server, up), name="demo-recv-up"),
            threading.Thread(target=_consume, args=(client, down), name="demo-recv-down"),
        ]
        for worker in workers:
            worker.start()
        survived = 0
        try:
            time.sleep(1.0)
            for round_number in range(1, rounds + 1):
                for kind in faults:
                    survived += _one_outage(kind, round_number, proxy, timeline, outage, heartbeat, say, up, down)
                    time.sleep(0.5)  # healthy traffic between outages
        finally:
            stop.set()
            for channel, side in ((client, up), (server, down)):
                try:
                    channel.flush(timeout=30)
                except (TimeoutError, SessionLost, ChannelClosed) as exc:
                    side.unacked = {int(p.decode().split(":")[1]) for _, p in getattr(exc, "unacked", ())}
            try:
                client.close(timeout=30)
            except SessionLost as exc:
                up.unacked |= {int(p.decode().split(":")[1]) for _, p in exc.unacked}
            for worker in workers:
                worker.join(30)
            server.close(timeout=5)
    up_tally = check_stream(up.sent, set(up.sent) - up.unacked, up.delivered)
    down_tally = check_stream(down.sent, set(down.sent) - down.unacked, down.delivered)
    say("")
    say(f"client -> server: {up_tally.summary()}")
    say(f"server -> client: {down_tally.summary()}")
    say(f"outages survived: {survived}; reconnects: {client.statistics().resumes}; "
        f"retransmitted: {client.statistics().retransmitted + server.statistics().retransmitted}")
    return up_tally, down_tally, survived


def _one_outage(
    kind: str,
    round_number: int,
    proxy: FaultProxy,
    timeline: _Timeline,
    outage: float,
    heartbeat: float,
    say: Callable[[str], None],
    up: _Side,
    down: _Side,
) -> int:
    with timeline.lock:
        before_down = len(timeline.disconnected["client"])
        before_up = len(timeline.resumed["client"])
    start = time.monotonic()
    if kind == "blackhole":
        proxy.blackhole()
        detected = timeline.wait(lambda: len(timeline.disconnected["client"]) > before_down, outage)
        time.sleep(max(0.0, outage - (time.monotonic() - start)))
        healed = time.monotonic()
        proxy.heal()
    elif kind == "reset":
        healed = start
        proxy.reset()
    else:
        healed = start
        proxy.close_connections()
    recovered = timeline.wait(lambda: len(timeline.resumed["client"]) > before_up, 30 + 10 * heartbeat)
    with timeline.lock:
        down_times = timeline.disconnected["client"][before_down:]
        up_times = timeline.resumed["client"][before_up:]
    detection = f"detected in {down_times[0] - start:.2f} s" if down_times else "not detected (!)"
    recovery = f"resumed {up_times[-1] - healed:.2f} s after the link came back" if up_times else "not resumed (!)"
    if kind == "blackhole" and not detected:
        detection = "not detected within the outage (!)"
    say(
        f"outage {round_number}/{kind:<9}: {detection}, {recovery}; "
        f"delivered so far {len(up.delivered)} up, {len(down.delivered)} down"
    )
    return 1 if recovered else 0


def _produce(channel: Channel, side: _Side, rate: float, stop: threading.Event) -> None:
    interval = 1.0 / rate
    number = 0
    next_at = time.monotonic()
    try:
        while not stop.is_set():
            channel.send(f"{side.name}:{number}".encode())
            side.sent.append(number)
            number += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing, so progress is watchable
    except (SessionLost, ChannelClosed) as exc:
        logger.warning("%s sender stopped: %s", side.name, exc)


def _consume(channel: Channel, side: _Side) -> None:
    try:
        while True:
            for payload in channel.recv_many():
                side.delivered.append(int(payload.decode().split(":")[1]))
    except (SessionLost, ChannelClosed):
        return


def main(argv: list[str] | None = None) -> int:
    """Run the demo from the command line; 0 when the tally is clean."""
    parser = argparse.ArgumentParser(prog="rtcat demo", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_from_args(args)


def run_from_args(args: argparse.Namespace) -> int:
    """Run with parsed arguments; the exit status."""
    faults = tuple(kind for kind in args.faults.split(",") if kind)
    up, down, survived = run_demo(
        rounds=args.rounds, faults=faults, outage=args.outage, rate=args.rate, heartbeat=args.heartbeat, seed=args.seed
    )
    expected = args.rounds * len(faults)
    clean = up.ok and down.ok and survived == expected and up.delivered > 0 and down.delivered > 0
    if clean:
        print(f"demo: PASS: lost 0, duplicated 0, reordered 0 across {survived} outages", file=sys.stderr)
    else:
        print(f"demo: FAIL: {survived}/{expected} outages survived; the tallies above show any anomaly", file=sys.stderr)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
