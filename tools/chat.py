#!/usr/bin/env python3
"""A multi-client chat over reliable_tcp: the seed's customer-service scenario.

    python tools/chat.py serve 9000
    python tools/chat.py join 127.0.0.1 9000 agent
    python tools/chat.py join 127.0.0.1 9000 customer-1

The server relays every line to every other participant, prefixed with the
sender's name. Pull a cable, sleep a laptop, switch a phone to airplane mode
for less than the resume window: no line is lost or doubled. Written only
against the public API.
"""

from __future__ import annotations

import argparse
import sys
import threading

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
    """One participant: sends lines, collects (or prints) what others say."""

    def __init__(self, address: tuple[str, int], name: str, **options: object) -> None:
        self.channel = reliable_tcp.connect(address, **options)  # type: ignore[arg-type]
        self.channel.send(name.encode())

    def say(self, line: str) -> None:
        """Send one line to everyone else."""
        self.channel.send(line.encode())

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
    try:
        for line in sys.stdin:
            client.say(line.rstrip("\n"))
        client.close()
    except KeyboardInterrupt:
        client.channel.abort()
        return 130
    except reliable_tcp.SessionLost as exc:
        print(f"chat: connection lost; {len(exc.unacked)} lines were not delivered", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
