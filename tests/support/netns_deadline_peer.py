"""Inside a test host: how long close() and connect() take while the cable is out.

    python tests/support/netns_deadline_peer.py 10.x.y.2:7000

Connects, prints ``connected``, waits for the link to be declared dead (the
test pulls the cable then), then times ``close(timeout=1)`` and a fresh
``connect(timeout=1)`` whose SYNs go unanswered; prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import reliable_tcp


SHARED_THREADS = ("rtcp-timers", "rtcp-events")


def rtcp_threads(shared: bool) -> list[str]:
    """The library's live threads, with or without the process-wide shared ones."""
    return sorted(t.name for t in threading.enumerate()
                  if t.name.startswith("rtcp-") and (shared or t.name not in SHARED_THREADS))


def main() -> int:
    host, port = sys.argv[1].rsplit(":", 1)
    address = (host, int(port))
    down = threading.Event()

    def on_event(event: reliable_tcp.ChannelEvent) -> None:
        if event.kind == "disconnected":
            down.set()

    options = {"heartbeat_interval": 0.2, "handshake_timeout": 5.0, "on_event": on_event}
    channel = reliable_tcp.connect(address, timeout=30, **options)  # type: ignore[arg-type]
    print("connected", flush=True)
    if not down.wait(30):
        print(json.dumps({"error": "the outage was never detected"}), flush=True)
        return 1
    channel.send(b"unacknowledged")
    started = time.monotonic()
    try:
        channel.close(timeout=1.0)
        close_error = ""
    except reliable_tcp.SessionLost as lost:
        close_error = f"SessionLost({len(lost.unacked)})"
    close_s = time.monotonic() - started
    started = time.monotonic()
    try:
        reliable_tcp.connect(address, timeout=1.0, heartbeat_interval=0.2, handshake_timeout=5.0)
        connect_error = ""
    except TimeoutError as exc:
        connect_error = type(exc).__name__
    connect_s = time.monotonic() - started
    # A channel's own threads must be gone once its calls return; the two
    # shared ones (timers, callbacks) may have had work a moment ago and end
    # after a second with nothing to do, so they get a deadline instead.
    threads = rtcp_threads(shared=False)
    deadline = time.monotonic() + 5.0
    while rtcp_threads(shared=True) and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps({"close_s": close_s, "close_error": close_error, "connect_s": connect_s,
                      "connect_error": connect_error, "threads": threads,
                      "threads_after_idle": rtcp_threads(shared=True)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
