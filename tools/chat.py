#!/usr/bin/env python3
"""A multi-client chat over reliable_tcp: the seed's customer-service scenario.

    python tools/chat.py serve 9000
    python tools/chat.py join 127.0.0.1 9000 agent
    python tools/chat.py join 127.0.0.1 9000 customer-1

The server relays every line to every other participant, prefixed with the
sender's name. Each line you type is shown with \u2713 when it is queued and
again with \u2713\u2713 once the server has it (its delivery receipt); while
the link is down a status line says so and for how long, and what you type
meanwhile goes out when it is back. Pull a cable, sleep a laptop, switch a
phone to airplane mode for less than the resume window: no line is lost or
doubled. Written only against the public API.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import reliable_tcp


class ChatServer:
    """Relays each participant's lines to all the others."""

    def __init__(self, listener: reliable_tcp.Listener) -> None:
        self.listener = listener
        self.lock = threading.Lock()
        self.members: dict[reliable_tcp.Channel, str] = {}
        self.threads: list[threading.Thread] = []

    def serve_forever(self) -> None:
        """Accept participants until the listener closes."""
        while True:
            try:
                channel = self.listener.accept()
            except reliable_tcp.ChannelClosed:
                return
            thread = threading.Thread(target=self._serve, args=(channel,), name="chat-member", daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, channel: reliable_tcp.Channel) -> None:
        try:
            name = channel.recv().decode()
            with self.lock:
                self.members[channel] = name
            for line in channel:
                self._relay(channel, f"{name}: {line.decode()}".encode())
        except reliable_tcp.ReliableTCPError:
            pass  # the member left or its session was lost
        finally:
            with self.lock:
                self.members.pop(channel, None)
            channel.abort()

    def _relay(self, sender: reliable_tcp.Channel, line: bytes) -> None:
        with self.lock:
            others = [member for member in self.members if member is not sender]
        for member in others:
            try:
                member.send(line, timeout=10)
            except (reliable_tcp.ReliableTCPError, TimeoutError):
                pass  # that member is gone; its own thread cleans up


class ChatClient:
    """One participant: sends lines, tracks each one's delivery receipt,
    collects (or prints) what others say, and knows whether the link is up."""

    def __init__(self, address: tuple[str, int], name: str, **options: object) -> None:
        self._lock = threading.Lock()
        self._down_since: float | None = None  # monotonic time the link went down
        self._outages: list[float] = []  # how long each finished outage lasted
        self.channel = reliable_tcp.connect(address, on_event=self._on_event, **options)  # type: ignore[arg-type]
        self.channel.send(name.encode())
        #: Each line said, by its sequence number (its receipt's name).
        self.said: dict[int, str] = {}

    def say(self, line: str) -> int:
        """Send one line to everyone else (queued at once, even while the link
        is down: it goes out when the link is back); its sequence number."""
        seq = self.channel.send(line.encode())
        self.said[seq] = line
        return seq

    def delivered(self, seq: int) -> bool:
        """Whether the line ``say`` numbered ``seq`` reached the chat server."""
        return self.channel.acked_seq >= seq

    def wait_delivered(self, seq: int, timeout: float | None = None) -> None:
        """Until line ``seq`` reached the server (TimeoutError, SessionLost)."""
        self.channel.wait_acked(seq, timeout)

    def link_status(self) -> str:
        """"up", or "down for N s" while the link is out."""
        with self._lock:
            since = self._down_since
        return "up" if since is None else f"down for {time.monotonic() - since:.0f} s"

    def outages(self) -> list[float]:
        """How long each outage that ended lasted (s)."""
        with self._lock:
            return list(self._outages)

    def _on_event(self, event: reliable_tcp.ChannelEvent) -> None:
        with self._lock:
            if event.kind is reliable_tcp.EventKind.DISCONNECTED and self._down_since is None:
                self._down_since = time.monotonic()
            elif event.kind is reliable_tcp.EventKind.RESUMED and self._down_since is not None:
                self._outages.append(time.monotonic() - self._down_since)
                self._down_since = None

    def lines(self) -> list[str]:
        """Every line received so far (non-blocking)."""
        out: list[str] = []
        while True:
            try:
                out.append(self.channel.recv(timeout=0).decode())
            except TimeoutError:
                return out

    def close(self) -> None:
        """Leave the chat after everything said was acknowledged."""
        self.channel.close()


#: What the terminal shows under each of the user's own lines.
QUEUED, DELIVERED = "\u2713", "\u2713\u2713"


def _show_receipts(client: ChatClient, stop: threading.Event) -> None:
    """Print each of the user's lines again with ✓✓ once the server has it, in order."""
    shown = 0
    while not stop.is_set():
        pending = sorted(seq for seq in list(client.said) if seq > shown)  # a copy: the main thread adds lines
        if not pending:
            stop.wait(0.05)
            continue
        try:
            client.wait_delivered(pending[0], timeout=0.5)
        except TimeoutError:
            continue
        except reliable_tcp.ReliableTCPError:
            return
        for seq in pending:
            if not client.delivered(seq):
                break
            print(f"  {DELIVERED} {client.said[seq]}", flush=True)
            shown = seq


def _show_link(client: ChatClient, stop: threading.Event) -> None:
    """A status line on stderr while the link is down, and when it is back."""
    was = "up"
    while not stop.wait(1.0):
        status = client.link_status()
        if status != "up":
            print(f"chat: link {status}; what you type goes out when it is back", file=sys.stderr, flush=True)
        elif was != "up":
            print(f"chat: link back after {client.outages()[-1]:.1f} s", file=sys.stderr, flush=True)
        was = status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("port", type=int)
    join = sub.add_parser("join")
    join.add_argument("host")
    join.add_argument("port", type=int)
    join.add_argument("name")
    args = parser.parse_args()
    if args.command == "serve":
        with reliable_tcp.listen(("0.0.0.0", args.port)) as listener:
            print(f"chat server on port {listener.address[1]}", file=sys.stderr)
            try:
                ChatServer(listener).serve_forever()
            except KeyboardInterrupt:
                return 130
        return 0
    client = ChatClient((args.host, args.port), args.name)
    printer = threading.Thread(target=lambda: [print(m.decode(), flush=True) for m in client.channel], daemon=True)
    printer.start()
    stop = threading.Event()
    for show in (_show_receipts, _show_link):
        threading.Thread(target=show, args=(client, stop), daemon=True).start()
    try:
        for line in sys.stdin:
            client.say(line.rstrip("\n"))
            print(f"  {QUEUED} {line.rstrip()}", flush=True)
        client.close()
        stop.set()
    except KeyboardInterrupt:
        client.channel.abort()
        return 130
    except reliable_tcp.SessionLost as exc:
        print(f"chat: connection lost; {len(exc.unacked)} lines were not delivered", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
