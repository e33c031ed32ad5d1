"""How long one client's flood of tiny frames holds an asyncio server's loop.

    python tools/bench_flood_stall.py [--runs 3]

Serves with ``reliable_tcp.asyncio.serve`` on loopback, runs a 5 ms ticker
on the same loop, and has a raw client open a session and send PING frames
as fast as it can until the server cuts it off (over
max_control_frames_per_second). Prints the ticker's worst lateness per
run: the time every other session on that loop would have waited (their
heartbeats, their reads). docs/design.md quotes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import time

import reliable_tcp
import reliable_tcp.asyncio as rta
from reliable_tcp.core import frames as f

TICK = 0.005


async def one_run() -> float:
    async def drain(channel: rta.Channel) -> None:
        try:
            async for _ in channel:
                pass
        except reliable_tcp.ReliableTCPError:
            pass  # the flooder's session fails: the point

    server = await rta.serve(drain, ("127.0.0.1", 0))
    worst = 0.0
    flooding = True

    async def ticker() -> None:
        nonlocal worst
        while flooding:
            start = time.perf_counter()
            await asyncio.sleep(TICK)
            worst = max(worst, time.perf_counter() - start - TICK)

    def flood() -> None:
        with socket.create_connection(server.address, timeout=10) as sock:
            sock.sendall(f.encode(f.Hello(False, bytes(16), bytes(16), 1)))
            sock.recv(4096)  # the ACCEPT
            burst = f.encode(f.Ping(1)) * 20_000
            try:
                for _ in range(20):
                    sock.sendall(burst)
            except OSError:
                pass  # cut off

    tick = asyncio.ensure_future(ticker())
    await asyncio.to_thread(flood)
    await asyncio.sleep(0.3)  # whatever the loop still had to do with it
    flooding = False
    await tick
    await server.close()
    return worst


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # the flooder's failure is expected
    for run in range(1, args.runs + 1):
        print(f"run {run}: worst loop stall {asyncio.run(one_run()) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
