#!/usr/bin/env python3
"""Turn the JSON lines written by the namespace suite into the table of docs/reliability.md.

    RTCP_NETNS_HEARTBEATS=3,0.5 RTCP_RELIABILITY_LOG=/tmp/rel.jsonl python -m pytest tests/test_netns.py
    python tools/reliability_table.py /tmp/rel.jsonl
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    with open(sys.argv[1]) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows.sort(key=lambda r: (r["scenario"], -r["heartbeat"]))

    def cell(value: object, unit: str = "") -> str:
        return "-" if value is None else f"{value}{unit}"

    print(
        "| scenario | heartbeat | result | detection after the fault began "
        "| resume after the link came back | messages replayed | resumes |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        result = r.get("outcome", "pass: lost 0, dup 0, reordered 0")
        if "throughput_msgs_per_s" in r:
            result += f"; {r['throughput_msgs_per_s']} msg/s"
        print(
            f"| {r['scenario']} | {r['heartbeat']} s | {result} | {cell(r['detection_s'], ' s')} | "
            f"{cell(r['resume_s'], ' s')} | {r['replayed']} | {r['resumes']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
