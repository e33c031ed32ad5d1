"""A journaled client process for the kill -9 tests.

    python tests/support/durable_peer.py send --address HOST:PORT --journal DIR --count N
    python tests/support/durable_peer.py recv --address HOST:PORT --journal DIR --count N --out FILE

``--front asyncio`` runs the same peer on the asyncio API.

``send`` numbers its messages by sequence (message n is seq n + 1) and
continues, after a restart, from the journal's last durable send. ``recv``
appends each message to FILE, then asks for the next (which commits the
previous one). Each prints progress lines for the test driving the kills.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading

import reliable_tcp
import reliable_tcp.asyncio as rta

OPTIONS = {"heartbeat_interval": 0.2, "resume_window": 60.0, "handshake_timeout": 2.0}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("send", "recv"))
    parser.add_argument("--address", required=True)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out")
    parser.add_argument("--front", choices=("threads", "asyncio"), default="threads")
    args = parser.parse_args()
    if args.front == "asyncio":
        return asyncio.run(main_asyncio(args))
    host, port = args.address.rsplit(":", 1)
    channel = reliable_tcp.connect((host, int(port)), journal=args.journal, timeout=30, **OPTIONS)
    print(f"started {channel.last_sent_seq} {channel.last_committed_seq} {channel.acked_seq}", flush=True)
    if args.mode == "send":
        for number in range(channel.last_sent_seq, args.count):
            channel.send(b"%d" % number)
            print(f"sent {number}", flush=True)  # durable: send returned
        channel.close(timeout=30)
        return 0
    write_until_closed(channel, args.out)
    return 0


async def main_asyncio(args: argparse.Namespace) -> int:
    host, port = args.address.rsplit(":", 1)
    channel = await rta.connect((host, int(port)), journal=args.journal, timeout=30, **OPTIONS)
    print(f"started {channel.last_sent_seq} {channel.last_committed_seq} {channel.acked_seq}", flush=True)
    if args.mode == "send":
        for number in range(channel.last_sent_seq, args.count):
            await channel.send(b"%d" % number)
            print(f"sent {number}", flush=True)  # durable: send returned
        await channel.close(timeout=30)
        return 0
    await write_until_closed_asyncio(channel, args.out)
    return 0


async def write_until_closed_asyncio(channel: rta.Channel, path: str, hang_at_end: bool = False) -> None:
    """:func:`write_until_closed` on the asyncio API."""
    with open(path, "ab") as out:
        async for message in channel:
            out.write(message + b"\n")
            out.flush()
            print(f"got {int(message)}", flush=True)
    await channel.commit()
    if hang_at_end:
        print("peer closed", flush=True)
        await asyncio.Event().wait()  # until killed
    await channel.close(timeout=30)


def write_until_closed(channel: reliable_tcp.Channel, path: str, hang_at_end: bool = False) -> None:
    """Append each message to ``path`` as a line, asking for the next one to
    commit it, until the peer closes; then commit the last and close.
    ``hang_at_end``: stop right after the peer's close, before our own
    close() (the test kills the process there)."""
    with open(path, "ab") as out:
        while True:
            try:
                message = channel.recv()
            except reliable_tcp.ChannelClosed:
                break
            out.write(message + b"\n")
            out.flush()
            print(f"got {int(message)}", flush=True)
    channel.commit()
    if hang_at_end:
        print("peer closed", flush=True)
        threading.Event().wait()  # until killed
    channel.close(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
