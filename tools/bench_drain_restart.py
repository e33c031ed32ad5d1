#!/usr/bin/env python3
"""A planned restart of a durable listener under load: drain, restart, count.

    python tools/bench_drain_restart.py [--sessions 1000] [--retry-after 3] [--drain-timeout 20] [--json out.json]

A listener process (the asyncio front, ``rta.serve`` with a journal)
serves ``--sessions`` sessions from a client process; every client sends a
numbered message every ``--period`` seconds. The listener gets SIGTERM and
drains (``server.drain``); once it has exited, a new listener process
starts on the same port and journal. Every client keeps sending throughout.
Then the clients stop and close. Printed: how long the drain took, how long
from SIGTERM until every session had resumed on the new listener, and the
check that every message sent arrived exactly once, in order, across the
two listener processes (each records what it committed, by session).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_reconnect_storm import HEARTBEAT, RESUME_WINDOW, raise_descriptor_limit  # noqa: E402


def listener_main(port: int, journal: str, record: str, sessions: int, drain_timeout: float, retry_after: float) -> None:
    """One listener process: serve until SIGTERM (then drain) or until every
    session it holds has ended; write what it committed, by session."""
    import reliable_tcp.asyncio as rta
    from reliable_tcp import ChannelClosed, SessionLost

    raise_descriptor_limit()
    received: dict[str, list[int]] = {}

    async def handler(channel: Any) -> None:
        into = received.setdefault(channel.session_id, [])
        while True:
            try:
                message = await channel.recv()
                await channel.commit()
            except (ChannelClosed, SessionLost):
                return
            into.append(int(message))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        terminated = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, terminated.set)
        server = await rta.serve(handler, ("127.0.0.1", port), journal=journal, max_sessions=sessions + 100, backlog=4096,
                                 heartbeat_interval=HEARTBEAT, resume_window=RESUME_WINDOW)
        print("listening", flush=True)
        if server.listener.session_count:
            # A restart: done once every session it took back has ended.
            while server.listener.session_count and not terminated.is_set():
                await asyncio.sleep(0.2)  # a measurement loop, not synchronisation
            await server.close()
        else:
            await terminated.wait()
            started = time.monotonic()
            await server.drain(drain_timeout, retry_after=retry_after)
            print(json.dumps({"drain_s": round(time.monotonic() - started, 3)}), flush=True)
        with open(record, "w") as f:
            json.dump(received, f)

    asyncio.run(main())


def clients_main(port: int, sessions: int, period: float) -> None:
    """The client process: reads "stop" on stdin; prints JSON lines."""
    import reliable_tcp.asyncio as rta

    raise_descriptor_limit()

    async def main() -> None:
        resumed: dict[str, float] = {}
        channels = []
        for _ in range(sessions):
            holder: dict[str, Any] = {}

            def on_event(event: Any, holder: dict[str, Any] = holder) -> None:
                if event.kind == "resumed" and "channel" in holder:
                    resumed.setdefault(holder["channel"].session_id, time.monotonic())

            channel = await rta.connect(("127.0.0.1", port), proxy=False, on_event=on_event, heartbeat_interval=HEARTBEAT,
                                        resume_window=RESUME_WINDOW, timeout=60)
            holder["channel"] = channel
            channels.append(channel)
        sent = {channel.session_id: 0 for channel in channels}
        stop = asyncio.Event()

        async def pump(channel: Any) -> None:
            await asyncio.sleep(period * (hash(channel.session_id) % 1000) / 1000)  # spread the sends
            while not stop.is_set():
                await channel.send(b"%d" % sent[channel.session_id])
                sent[channel.session_id] += 1
                await asyncio.sleep(period)

        pumps = [asyncio.create_task(pump(channel)) for channel in channels]
        print(json.dumps({"ready": time.monotonic()}), flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)
        stop.set()
        await asyncio.gather(*pumps)
        started = time.monotonic()
        await asyncio.gather(*(channel.close(timeout=60) for channel in channels), return_exceptions=True)
        print(json.dumps({"sent": sent, "resumed": resumed, "close_s": round(time.monotonic() - started, 3)}), flush=True)

    asyncio.run(main())


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_json_line(process: subprocess.Popen[str], key: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the process ended before printing {key}")
        if line.startswith("{") and key in (parsed := json.loads(line)):
            return parsed  # type: ignore[no-any-return]
    raise RuntimeError(f"no {key} in time")


def wait_line(process: subprocess.Popen[str], text: str) -> None:
    assert process.stdout is not None
    while (line := process.stdout.readline()) and text not in line:
        pass
    if not line:
        raise RuntimeError(f"the process ended before printing {text!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--period", type=float, default=1.0, help="seconds between two messages of one session")
    parser.add_argument("--retry-after", type=float, default=3.0)
    parser.add_argument("--drain-timeout", type=float, default=20.0)
    parser.add_argument("--json", help="write the result to this file")
    parser.add_argument("--role", choices=("listener", "clients"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--journal", help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "listener":
        listener_main(args.port, args.journal, args.record, args.sessions, args.drain_timeout, args.retry_after)
        return
    if args.role == "clients":
        clients_main(args.port, args.sessions, args.period)
        return
    raise_descriptor_limit()
    port = free_port()
    me = [sys.executable, os.path.abspath(__file__), "--sessions", str(args.sessions), "--port", str(port),
          "--drain-timeout", str(args.drain_timeout), "--retry-after", str(args.retry_after)]
    with tempfile.TemporaryDirectory(prefix="rtcp-drain-") as tmp:
        journal = os.path.join(tmp, "journal")

        def listener(n: int) -> subprocess.Popen[str]:
            return subprocess.Popen([*me, "--role", "listener", "--journal", journal, "--record", os.path.join(tmp, f"r{n}.json")],
                                    stdout=subprocess.PIPE, text=True)

        first = listener(1)
        wait_line(first, "listening")
        clients = subprocess.Popen([*me, "--role", "clients", "--period", str(args.period)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        second = None
        try:
            read_json_line(clients, "ready", 600)
            time.sleep(2 * args.period)  # every session has sent: the load under which the drain happens
            sigterm_at = time.monotonic()
            first.send_signal(signal.SIGTERM)
            drain = read_json_line(first, "drain_s", args.drain_timeout + 60)
            first.wait(60)
            down_at = time.monotonic()
            second = listener(2)
            wait_line(second, "listening")
            up_at = time.monotonic()
            time.sleep(args.retry_after * 1.25 + 2 * args.period)  # the hint, its spread, and a few sends after it
            assert clients.stdin is not None
            clients.stdin.write("stop\n")
            clients.stdin.flush()
            report = read_json_line(clients, "sent", 300)
            second.wait(120)
        finally:
            for process in (clients, first, second):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
        records = []
        for n in (1, 2):
            with open(os.path.join(tmp, f"r{n}.json")) as f:
                records.append(json.load(f))
    sent: dict[str, int] = report["sent"]
    wrong = 0
    for session_id, count in sent.items():
        got = records[0].get(session_id, []) + records[1].get(session_id, [])
        wrong += got != list(range(count))
    resumed = sorted(report["resumed"].values())
    result = {
        "sessions": args.sessions,
        "messages_sent": sum(sent.values()),
        "sessions_with_a_wrong_stream": wrong,
        "sessions_resumed": len(resumed),
        "drain_s": drain["drain_s"],
        "restart_s": round(up_at - down_at, 3),
        "all_resumed_after_sigterm_s": round(resumed[-1] - sigterm_at, 3) if resumed else None,
        "median_resumed_after_sigterm_s": round(resumed[len(resumed) // 2] - sigterm_at, 3) if resumed else None,
        "retry_after_s": args.retry_after,
        "close_all_s": report["close_s"],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
