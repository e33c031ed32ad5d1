"""One end of a numbered two-way stream, run as its own process (inside a test host).

    python tests/support/netns_peer.py server --address 10.x.y.2:7000 --count 3000 --out b.json
    python tests/support/netns_peer.py client --address 10.x.y.2:7000 --count 3000 --out a.json

Each side sends ``count`` numbered messages at ``rate`` per second while
receiving the other's, then the client closes. The JSON result lists what
was sent, what stayed unacknowledged, what was delivered (in order), and
the state changes with their monotonic timestamps, for the checker.
Exit status: 0 when the session ended cleanly, 3 when it was lost.
``--front asyncio`` runs the same peer on the asyncio API.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from typing import Any

import reliable_tcp
import reliable_tcp.asyncio as rta


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("server", "client"))
    parser.add_argument("--address", required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--heartbeat", type=float, default=0.5)
    parser.add_argument("--resume-window", type=float, default=120.0)
    parser.add_argument("--handshake-timeout", type=float, default=3.0)
    parser.add_argument("--pause-at", type=int, default=None, help="stop reading after this many deliveries")
    parser.add_argument("--pause-for", type=float, default=0.0, help="... for this many seconds")
    parser.add_argument("--queue-bytes", type=int, default=64 * 1024 * 1024, help="max_queued_bytes")
    parser.add_argument("--out", required=True)
    parser.add_argument("--front", choices=("threads", "asyncio"), default="threads")
    args = parser.parse_args()
    if args.front == "asyncio":
        return asyncio.run(main_asyncio(args))
    host, port = args.address.rsplit(":", 1)
    events: list[tuple[str, float, str, int]] = []
    options = peer_options(args, events)
    listener = None
    if args.role == "server":
        listener = reliable_tcp.listen((host, int(port)), **options)
        print("listening", flush=True)
        channel = listener.accept()
    else:
        channel = reliable_tcp.connect((host, int(port)), timeout=30, **options)
    result: dict[str, Any] = {"sent": 0, "unacked": [], "delivered": [], "lost": None}
    pause = (args.pause_at, args.pause_for) if args.pause_at is not None else None
    receiver = threading.Thread(
        target=_receive, args=(channel, args.count, result, args.role == "server", pause, events), daemon=True
    )
    receiver.start()
    status = 0
    try:
        padding = b"." * max(0, args.size - 12)
        start = time.monotonic()
        for number in range(args.count):
            channel.send(b"%d|" % number + padding)
            result["sent"] = number + 1
            delay = start + (number + 1) / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing, so faults land mid-stream
        channel.flush()
        receiver.join()  # the server's receiver returns once the client has closed
        channel.close(timeout=60)
    except reliable_tcp.SessionLost as lost:
        result["lost"] = lost.reason
        result["unacked"] = [int(p.split(b"|")[0]) for _, p in lost.unacked]
        status = 3
    except reliable_tcp.ChannelClosed as closed:
        result["unacked"] = [int(p.split(b"|")[0]) for _, p in closed.unacked]
    receiver.join(10)
    return finish(args, channel.statistics(), result, events, status, lambda: (channel.abort(), listener and listener.close(1)))


def peer_options(args: argparse.Namespace, events: list[tuple[str, float, str, int]]) -> dict[str, Any]:
    """The channel options from the command line; state changes go to ``events``."""

    def on_event(event: reliable_tcp.ChannelEvent) -> None:
        events.append((event.kind, time.monotonic(), event.detail, event.replayed))

    return {
        "heartbeat_interval": args.heartbeat,
        "resume_window": args.resume_window,
        "handshake_timeout": args.handshake_timeout,
        "on_event": on_event,
        "max_queued_bytes": args.queue_bytes,
    }


def finish(
    args: argparse.Namespace,
    stats: reliable_tcp.ChannelStatistics,
    result: dict[str, Any],
    events: list[tuple[str, float, str, int]],
    status: int,
    end: Any,
) -> int:
    """Write the JSON result for the checker; return the exit status."""
    if result["lost"] is None and result.get("receive_lost"):
        result["lost"] = result["receive_lost"]
        status = 3
    result["events"] = events
    result["stats"] = {
        "resumes": stats.resumes,
        "disconnects": stats.disconnects,
        "retransmitted": stats.retransmitted,
        "duplicates_dropped": stats.duplicates_dropped,
        "last_detection_time": stats.last_detection_time,
        "last_recovery_time": stats.last_recovery_time,
    }
    end()
    with open(args.out, "w") as f:
        json.dump(result, f)
    return status


async def main_asyncio(args: argparse.Namespace) -> int:
    """The same peer on the asyncio API: one task sends, one receives."""
    host, port = args.address.rsplit(":", 1)
    events: list[tuple[str, float, str, int]] = []
    options = peer_options(args, events)
    listener = None
    if args.role == "server":
        listener = await rta.listen((host, int(port)), **options)
        print("listening", flush=True)
        channel = await listener.accept()
    else:
        channel = await rta.connect((host, int(port)), timeout=30, **options)
    result: dict[str, Any] = {"sent": 0, "unacked": [], "delivered": [], "lost": None}
    pause = (args.pause_at, args.pause_for) if args.pause_at is not None else None
    receiver = asyncio.ensure_future(_receive_asyncio(channel, args.count, result, args.role == "server", pause, events))
    status = 0
    try:
        padding = b"." * max(0, args.size - 12)
        start = time.monotonic()
        for number in range(args.count):
            await channel.send(b"%d|" % number + padding)
            result["sent"] = number + 1
            delay = start + (number + 1) / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing, so faults land mid-stream
        await channel.flush()
        await receiver
        await channel.close(timeout=60)
    except reliable_tcp.SessionLost as lost:
        result["lost"] = lost.reason
        result["unacked"] = [int(p.split(b"|")[0]) for _, p in lost.unacked]
        status = 3
    except reliable_tcp.ChannelClosed as closed:
        result["unacked"] = [int(p.split(b"|")[0]) for _, p in closed.unacked]
    try:
        await asyncio.wait_for(receiver, 10)
    except TimeoutError:
        pass
    status = finish(args, channel.statistics(), result, events, status, channel.abort)
    if listener is not None:
        await listener.close(1)
    return status


async def _receive_asyncio(
    channel: rta.Channel,
    count: int,
    result: dict[str, Any],
    wait_for_close: bool,
    pause: tuple[int, float] | None,
    events: list[tuple[str, float, str, int]],
) -> None:
    delivered: list[int] = result["delivered"]
    try:
        while len(delivered) < count:
            if pause is not None and len(delivered) >= pause[0]:
                print("paused", flush=True)
                events.append(("paused", time.monotonic(), "", 0))
                await asyncio.sleep(pause[1])  # the stall under test, not a synchronisation
                events.append(("reading again", time.monotonic(), "", 0))
                print("reading again", flush=True)
                pause = None
            before = len(delivered)
            for message in await channel.recv_many():
                delivered.append(int(message.split(b"|")[0]))
            if len(delivered) // 100 != before // 100:
                print(f"delivered {len(delivered)}", flush=True)
        if wait_for_close:
            async for _ in channel:
                pass
    except reliable_tcp.ChannelClosed:
        return
    except reliable_tcp.SessionLost as lost:
        result["receive_lost"] = lost.reason
        result.setdefault("unacked_from_receiver", [int(p.split(b"|")[0]) for _, p in lost.unacked])


def _receive(
    channel: reliable_tcp.Channel,
    count: int,
    result: dict[str, Any],
    wait_for_close: bool,
    pause: tuple[int, float] | None,
    events: list[tuple[str, float, str, int]],
) -> None:
    delivered: list[int] = result["delivered"]
    try:
        while len(delivered) < count:
            if pause is not None and len(delivered) >= pause[0]:
                # A slow consumer: the application stops reading for a while.
                print("paused", flush=True)
                events.append(("paused", time.monotonic(), "", 0))
                time.sleep(pause[1])  # the stall under test, not a synchronisation
                events.append(("reading again", time.monotonic(), "", 0))
                print("reading again", flush=True)
                pause = None
            before = len(delivered)
            for message in channel.recv_many():
                delivered.append(int(message.split(b"|")[0]))
            if len(delivered) // 100 != before // 100:
                print(f"delivered {len(delivered)}", flush=True)  # progress, for the test driving the faults
        if wait_for_close:
            # The client closes once both directions are done; wait for that.
            for _ in channel:
                pass
    except reliable_tcp.ChannelClosed:
        return
    except reliable_tcp.SessionLost as lost:
        result["receive_lost"] = lost.reason
        result.setdefault("unacked_from_receiver", [int(p.split(b"|")[0]) for _, p in lost.unacked])


if __name__ == "__main__":
    sys.exit(main())
