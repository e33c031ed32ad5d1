"""A journaled listener process for the kill -9 tests.

    python tests/support/durable_server.py --port PORT --journal DIR --out FILE

Accepts sessions (new or restored from the journal after a restart) and
appends every message of each to FILE, asking for the next one to commit
the previous. Prints "listening" once bound and "got N" as it goes.
"""

from __future__ import annotations

import argparse
import os
import sys

import reliable_tcp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from durable_peer import write_until_closed  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--hang-at-end", action="store_true", help="stop after the peer closes, before close()")
    args = parser.parse_args()
    options = {"heartbeat_interval": 0.2, "resume_window": 60.0, "handshake_timeout": 2.0}
    with reliable_tcp.listen(("127.0.0.1", args.port), journal=args.journal, **options) as listener:
        print("listening", flush=True)
        channel = listener.accept()
        print(f"session restored={channel.restored}", flush=True)
        write_until_closed(channel, args.out, args.hang_at_end)
    return 0


if __name__ == "__main__":
    sys.exit(main())
