"""One node of a cluster behind a load balancer, for the scaling tests.

    python tests/support/node_server.py --port PORT --node-id N [--heartbeat S] [--resume-window S]

Listens on 127.0.0.1:PORT with node id N and echoes every message of every
session back, each session in a thread of its own, until the peer closes.
Prints "listening" once bound.
"""

from __future__ import annotations

import argparse
import sys
import threading

import reliable_tcp


def echo(channel: reliable_tcp.Channel) -> None:
    try:
        for message in channel:
            channel.send(message)
        channel.close(timeout=30)
    except reliable_tcp.ReliableTCPError:
        channel.abort()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--node-id", type=int, required=True)
    parser.add_argument("--heartbeat", type=float, default=0.2)
    parser.add_argument("--resume-window", type=float, default=60.0)
    args = parser.parse_args()
    options = {"heartbeat_interval": args.heartbeat, "resume_window": args.resume_window, "handshake_timeout": 2.0}
    with reliable_tcp.listen(("127.0.0.1", args.port), node_id=args.node_id, max_sessions=4096, backlog=1024,
                             **options) as listener:
        print("listening", flush=True)
        while True:
            channel = listener.accept()
            threading.Thread(target=echo, args=(channel,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
