"""One node of a cluster behind a load balancer, for the scaling tests.

    python tests/support/node_server.py --port PORT --node-id N [--heartbeat S] [--resume-window S] [--front asyncio] [--log]

Listens on 127.0.0.1:PORT with node id N and echoes every message of every
session back, each session in a thread of its own, until the peer closes.
Prints "listening" once bound.

With ``--journal DIR --out DIR`` (threads front) it keeps its sessions in
the journal instead and, rather than echoing, appends each session's
messages to OUT/<session id> as lines, committing each once written: kill
it with SIGKILL and start it again with the same node id and journal, and
its sessions resume.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading

import reliable_tcp
import reliable_tcp.asyncio as rta


def echo(channel: reliable_tcp.Channel) -> None:
    try:
        for message in channel:
            channel.send(message)
        channel.close(timeout=30)
    except reliable_tcp.ReliableTCPError:
        channel.abort()


def record(channel: reliable_tcp.Channel, out: str) -> None:
    with open(os.path.join(out, channel.session_id), "ab") as f:
        try:
            while True:
                message = channel.recv()  # commits the previous one: it is in the file
                f.write(message + b"\n")
                f.flush()
        except reliable_tcp.ChannelClosed:
            channel.commit()
            channel.close(timeout=30)
        except reliable_tcp.ReliableTCPError:
            channel.abort()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--node-id", type=int, required=True)
    parser.add_argument("--heartbeat", type=float, default=0.2)
    parser.add_argument("--resume-window", type=float, default=60.0)
    parser.add_argument("--front", choices=("threads", "asyncio"), default="threads")
    parser.add_argument("--journal", help="keep sessions here (with --out)")
    parser.add_argument("--out", help="with --journal: one file of received lines per session")
    parser.add_argument("--log", action="store_true", help="the library's log on stderr (the tests read refusals from it)")
    args = parser.parse_args()
    if args.log:  # off by default: a benchmark's node does not pay for a line per session
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    options = {"heartbeat_interval": args.heartbeat, "resume_window": args.resume_window, "handshake_timeout": 2.0}
    if args.front == "asyncio":
        asyncio.run(serve_asyncio(args.port, args.node_id, options))
        return 0
    journal = {"journal": args.journal} if args.journal else {}
    with reliable_tcp.listen(("127.0.0.1", args.port), node_id=args.node_id, max_sessions=4096, backlog=1024,
                             **journal, **options) as listener:
        print("listening", flush=True)
        while True:
            channel = listener.accept()
            work = (record, (channel, args.out)) if args.journal else (echo, (channel,))
            threading.Thread(target=work[0], args=work[1], daemon=True).start()


async def serve_asyncio(port: int, node_id: int, options: dict[str, float]) -> None:
    """The same echo on the event loop (for many sessions per node)."""

    async def echo_async(channel: rta.Channel) -> None:
        async for message in channel:
            await channel.send(message)

    server = await rta.serve(echo_async, ("127.0.0.1", port), node_id=node_id, max_sessions=20000, backlog=4096,
                             max_pending_handshakes=1024, **options)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
