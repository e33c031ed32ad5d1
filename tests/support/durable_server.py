"""A journaled listener process for the kill -9 tests.

    python tests/support/durable_server.py --port PORT --journal DIR --out FILE

Accepts sessions (new or restored from the journal after a restart) and
appends every message of each to FILE, asking for the next one to commit
the previous. Prints "listening" once bound and "got N" as it goes.
``--front asyncio`` runs the same server on the asyncio API.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import reliable_tcp
import reliable_tcp.asyncio as rta

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from durable_peer import OPTIONS, write_until_closed, write_until_closed_asyncio  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--hang-at-end", action="store_true", help="stop after the peer closes, before close()")
    parser.add_argument("--front", choices=("threads", "asyncio"), default="threads")
    args = parser.parse_args()
    if args.front == "asyncio":
        return asyncio.run(main_asyncio(args))
    with reliable_tcp.listen(("127.0.0.1", args.port), journal=args.journal, **OPTIONS) as listener:
        print("listening", flush=True)
        channel = listener.accept()
        print(f"session restored={channel.restored}", flush=True)
        write_until_closed(channel, args.out, args.hang_at_end)
    return 0


async def main_asyncio(args: argparse.Namespace) -> int:
    async with rta.listen(("127.0.0.1", args.port), journal=args.journal, **OPTIONS) as listener:
        print("listening", flush=True)
        channel = await listener.accept()
        print(f"session restored={channel.restored}", flush=True)
        await write_until_closed_asyncio(channel, args.out, args.hang_at_end)
    return 0


if __name__ == "__main__":
    sys.exit(main())
