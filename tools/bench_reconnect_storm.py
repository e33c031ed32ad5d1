#!/usr/bin/env python3
"""How reconnects arrive at a listener after every session is cut at once.

    python tools/bench_reconnect_storm.py [--sessions 1000] [--jitter 0.5 1.0] [--down-for 0 3] [--json out.json]

A listener process (the asyncio front) and a client process holding
``--sessions`` sessions (asyncio front, default options but for the
backoff's ``jitter``) talk through a relay in this process. The relay
records when each connection arrives. For each jitter and each
``--down-for``, it resets every connection at once (a network blip); with
``--down-for S`` it then refuses connections for S seconds (a restart of
whatever stands in between) before accepting again. It prints how the
reconnect attempts arrived once the path was open: the busiest 10 ms and
100 ms, the attempts per session, and how long until every session had
resumed (client side, from its own events). All clocks are the machine's
monotonic clock, shared by the processes.

Run it with PYTHONPATH pointing at another checkout to compare versions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import socket
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import reliable_tcp.asyncio as rta  # noqa: E402
from reliable_tcp import Backoff  # noqa: E402

HEARTBEAT = 3.0
RESUME_WINDOW = 120.0


def raise_descriptor_limit() -> None:
    """A thousand sessions need more descriptors than some defaults allow."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def listener_process(port_queue: Any, sessions: int) -> None:
    raise_descriptor_limit()
    async def handler(channel: Any) -> None:
        async for _ in channel:
            pass

    async def main() -> None:
        server = await rta.serve(handler, ("127.0.0.1", 0), max_sessions=sessions + 100, backlog=4096,
                                 heartbeat_interval=HEARTBEAT, resume_window=RESUME_WINDOW)
        port_queue.put(server.address[1])
        await server.serve_forever()

    asyncio.run(main())


def client_process(port: int, sessions: int, jitter: float, commands: Any, results: Any) -> None:
    raise_descriptor_limit()
    async def main() -> None:
        resumed: list[float] = []

        def on_event(event: Any) -> None:
            if event.kind == "resumed":
                resumed.append(time.monotonic())

        backoff = Backoff(jitter=jitter)
        channels = []
        for _ in range(sessions):
            channels.append(await rta.connect(("127.0.0.1", port), proxy=False, backoff=backoff, on_event=on_event,
                                              heartbeat_interval=HEARTBEAT, resume_window=RESUME_WINDOW, timeout=60))
        loop = asyncio.get_running_loop()
        for round_ in range(1_000_000):
            results.put({"ready": round_})
            command = await loop.run_in_executor(None, commands.get)
            if command == "stop":
                break
            resumed.clear()
            deadline = time.monotonic() + RESUME_WINDOW
            while len(resumed) < sessions and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # a measurement loop, not synchronisation
            results.put({"resumed": list(resumed)})
        for channel in channels:
            channel.abort()

    asyncio.run(main())


class Relay:
    """A TCP relay that notes when each connection arrives and cuts them all at once."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.arrivals: list[float] = []
        self.transports: set[asyncio.Transport] = set()
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, backlog=4096, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close_listening(self) -> None:
        assert self.server is not None
        self.server.close()
        self.server = None

    def cut(self) -> None:
        for transport in list(self.transports):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            transport.abort()  # a reset, as a blip in between does
        self.transports.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.arrivals.append(time.monotonic())
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer.transport, up_writer.transport)
        self.transports.update(pair)  # type: ignore[arg-type]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                sink.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except asyncio.CancelledError:
            pass  # the measurement is over: asyncio's stream callback would log a cancelled handler as an error
        self.transports.difference_update(pair)  # type: ignore[arg-type]


def busiest(times: list[float], width: float) -> int:
    """The most arrivals within any ``width`` seconds."""
    times = sorted(times)
    most, start = 0, 0
    for end, when in enumerate(times):
        while when - times[start] > width:
            start += 1
        most = max(most, end - start + 1)
    return most


async def measure(sessions: int, jitter: float, downs: list[float]) -> list[dict[str, Any]]:
    context = multiprocessing.get_context("spawn")
    port_queue, commands, results = context.Queue(), context.Queue(), context.Queue()
    listener = context.Process(target=listener_process, args=(port_queue, sessions), daemon=True)
    listener.start()
    loop = asyncio.get_running_loop()
    relay = Relay(await loop.run_in_executor(None, port_queue.get, True, 60))
    await relay.open()
    clients = context.Process(target=client_process, args=(relay.port, sessions, jitter, commands, results), daemon=True)
    clients.start()
    rows = []
    try:
        for down in downs:
            await loop.run_in_executor(None, results.get, True, 300)  # the clients are ready
            await asyncio.sleep(1.0)  # the connect burst settles
            relay.arrivals.clear()
            commands.put("go")
            cut_at = time.monotonic()
            if down:
                await relay.close_listening()
            relay.cut()
            if down:
                await asyncio.sleep(down)  # the path is down this long: that is the scenario
                await relay.open()
            open_at = time.monotonic()
            resumed = (await loop.run_in_executor(None, results.get, True, RESUME_WINDOW + 30))["resumed"]
            after_open = [t for t in relay.arrivals if t >= open_at]
            rows.append({
                "jitter": jitter, "down_for_s": down, "sessions": sessions,
                "resumed": len(resumed),
                "attempts": len(relay.arrivals),
                "busiest_10ms": busiest(after_open, 0.010),
                "busiest_100ms": busiest(after_open, 0.100),
                "all_resumed_after_open_s": round(max(resumed) - open_at, 3) if resumed else None,
                "median_resumed_after_open_s": round(sorted(resumed)[len(resumed) // 2] - open_at, 3) if resumed else None,
                "first_arrival_after_cut_ms": round(1000 * (min(relay.arrivals) - cut_at), 1) if relay.arrivals else None,
            })
            print(json.dumps(rows[-1]), flush=True)
        commands.put("stop")
    finally:
        relay.cut()
        if relay.server is not None:
            await relay.close_listening()

        clients.join(30)
        for process in (clients, listener):
            if process.is_alive():
                process.kill()
            process.join(10)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--jitter", type=float, nargs="+", default=[0.5, 1.0],
                        help="Backoff.jitter values to compare (0.5 was the default until issue 29; 1.0, full jitter, is now)")
    parser.add_argument("--down-for", type=float, nargs="+", default=[0.0, 3.0], help="seconds the path stays down after the cut")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    raise_descriptor_limit()
    rows = []
    for jitter in args.jitter:
        rows += asyncio.run(measure(args.sessions, jitter, args.down_for))
    print()
    print(f"{'jitter':>6} {'down s':>6} {'attempts':>8} {'busiest 10 ms':>13} {'busiest 100 ms':>14} "
          f"{'median resumed s':>16} {'all resumed s':>13}")
    for row in rows:
        print(f"{row['jitter']:>6} {row['down_for_s']:>6} {row['attempts']:>8} {row['busiest_10ms']:>13} "
              f"{row['busiest_100ms']:>14} {row['median_resumed_after_open_s']!s:>16} {row['all_resumed_after_open_s']!s:>13}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
