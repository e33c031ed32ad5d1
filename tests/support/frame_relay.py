"""A relay between a client and a listener that counts the frames each way.

It can also play a server of the protocol's first edition toward the
client: one that refuses a HELLO carrying the QUIET flag (protocol.md 6.1)
as an unknown flag, with REJECT PROTOCOL_ERROR, and closes.
"""

from __future__ import annotations

import collections
import socket
import threading

from reliable_tcp.core import frames as f


class FrameRelay:
    """Relay connections from ``address`` (once listening) to ``target``."""

    def __init__(self, target: tuple[str, int], *, refuse_quiet: bool = False) -> None:
        self.target = target
        self.refuse_quiet = refuse_quiet
        #: Frames seen, by (direction, type name): direction "to_server" or "to_client".
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        #: Connections refused for the QUIET flag, and connections relayed.
        self.refused = 0
        self.relayed = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = self._server.getsockname()[:2]
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._start(self._accept_loop)

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name="frame-relay", daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._sockets.append(client)
            self._start(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        first = b""
        while len(first) < 13:  # the header and the HELLO's flags byte
            chunk = client.recv(13 - len(first))
            if not chunk:
                return
            first += chunk
        if self.refuse_quiet and first[3] == f.FrameType.HELLO and first[12] & f.FLAG_QUIET:
            with self._lock:
                self.refused += 1
            client.sendall(f.encode(f.Reject(f.RejectReason.PROTOCOL_ERROR, f"HELLO: unknown flags 0x{first[12]:02x}")))
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        self._sockets.append(upstream)
        with self._lock:
            self.relayed += 1
        self._start(self._pump, client, upstream, "to_server", first)
        self._pump(upstream, client, "to_client", b"")

    def _pump(self, source: socket.socket, sink: socket.socket, direction: str, first: bytes) -> None:
        decoder = f.FrameDecoder(1 << 24)
        data = first
        try:
            while True:
                if data:
                    for frame in decoder.feed(data):
                        with self._lock:
                            self.counts[direction, type(frame).__name__.upper()] += 1
                    sink.sendall(data)
                data = source.recv(1 << 16)
                if not data:
                    break
        except (OSError, f.FrameError):
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def count(self, direction: str, frame_type: str) -> int:
        """How many frames of ``frame_type`` (``"PING"``) went ``direction``."""
        with self._lock:
            return self.counts[direction, frame_type]

    def cut(self) -> None:
        """Break every relayed connection (a reset of the path); keep listening."""
        for sock in list(self._sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Stop relaying and end every thread the relay started."""
        self._closed = True
        try:
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        except OSError:
            pass
        self._server.close()
        for sock in list(self._sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> FrameRelay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
