#!/usr/bin/env python3
"""Turn the JSON lines written by the namespace suite into the table of docs/reliability.md.

    RTCP_NETNS_HEARTBEATS=3,0.5 RTCP_RELIABILITY_LOG=/tmp/rel.jsonl python -m pytest tests/faults/test_netns.py
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
        for key, label in (("disconnects", "disconnects"), ("close_s", "close took"), ("connect_s", "connect took")):
            if key in r:
                result += f"; {label} {r[key]}{' s' if key.endswith('_s') else ''}"
        print(
            f"| {r['scenario']} | {r['heartbeat']} s | {result} | {cell(r.get('detection_s'), ' s')} | "
            f"{cell(r.get('resume_s'), ' s')} | {cell(r.get('replayed'))} | {cell(r.get('resumes'))} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
