"""A fault-injecting TCP proxy for testing applications (and this library).

Put it between a client and a server on one machine, without root, and make
the network misbehave on purpose::

    with FaultProxy(("127.0.0.1", server_port)) as proxy:
        client = reliable_tcp.connect(proxy.address)
        proxy.blackhole()          # a pulled cable: nothing passes, no FIN, no RST
        proxy.heal()
        proxy.reset()              # RST to both sides of every connection
        proxy.close_connections()  # FIN to both sides

Faults per direction (``"up"`` is client to server, ``"down"`` the reverse,
``"both"``): blackhole, latency and jitter, bandwidth limit, slicing into
tiny segments, and cutting a connection after N bytes. Random choices come
from ``seed`` (printed in ``repr``) so a failing run can be replayed.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from dataclasses import dataclass, field, replace

from ..common.sockets import close_socket

__all__ = ["FaultProxy", "DirectionFaults"]

logger = logging.getLogger(__name__)

_CHUNK = 65536
_DIRECTIONS = ("up", "down")


@dataclass(frozen=True, slots=True)
class DirectionFaults:
    """The faults applied to one direction of every proxied connection."""

    blackhole: bool = False
    latency: float = 0.0
    jitter: float = 0.0
    bandwidth: float | None = None  # bytes per second
    slice_size: int | None = None  # forward in pieces of at most this many bytes
    limit_bytes: int | None = None  # reset a connection after forwarding this many


@dataclass(eq=False)
class _Link:
    client: socket.socket
    server: socket.socket | None = None
    forwarded: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    closed: bool = False
    aborted: bool = False  # how it was closed: RST (True) or FIN
    side: str = "both"  # which side the fault that closed it was aimed at


def _directions(direction: str) -> tuple[str, ...]:
    if direction == "both":
        return _DIRECTIONS
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be 'up', 'down' or 'both', not {direction!r}")
    return (direction,)


class FaultProxy:
    """Forwards TCP connections from ``listen`` to ``target``, injecting faults on demand."""

    def __init__(
        self,
        target: tuple[str, int],
        listen: tuple[str, int] = ("127.0.0.1", 0),
        *,
        seed: int | None = None,
    ) -> None:
        self.target = target
        self.seed = seed if seed is not None else random.randrange(2**32)
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._healed = threading.Condition(self._lock)
        self._faults = {d: DirectionFaults() for d in _DIRECTIONS}
        self._links: set[_Link] = set()
        self._orphans: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.connections_accepted = 0
        self.resets = 0
        #: Bytes forwarded so far, per direction ("up", "down").
        self.bytes_forwarded = {"up": 0, "down": 0}
        self._listener = socket.create_server(listen)
        host, port = self._listener.getsockname()[:2]
        self.address: tuple[str, int] = (host, port)
        self._start(self._accept_loop, "accept")

    def __repr__(self) -> str:
        return f"<FaultProxy {self.address[1]} -> {self.target[1]} seed={self.seed}>"

    # ---------------------------------------------------------------- faults

    def faults(self, direction: str) -> DirectionFaults:
        """The faults now applied to ``direction`` ("up" or "down")."""
        with self._lock:
            return self._faults[direction]

    def set_faults(self, direction: str = "both", **changes: object) -> None:
        """Change fault settings, e.g. ``set_faults("down", latency=0.05)``."""
        with self._lock:
            for d in _directions(direction):
                self._faults[d] = replace(self._faults[d], **changes)  # type: ignore[arg-type]
            self._healed.notify_all()

    def blackhole(self, direction: str = "both") -> None:
        """Stop forwarding, keeping every socket open: what a pulled cable looks like."""
        self.set_faults(direction, blackhole=True)

    def heal(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._faults = {d: DirectionFaults() for d in _DIRECTIONS}
            self._healed.notify_all()

    def reset(self, side: str = "both") -> None:
        """Abort every current connection with RST to ``side`` ("client",
        "server" or "both"). The other side of a one-sided reset keeps a
        half-open connection on which nothing more arrives."""
        self._end_links(abort=True, side=side)

    def close_connections(self, side: str = "both") -> None:
        """Close every current connection with FIN to ``side`` (see reset)."""
        self._end_links(abort=False, side=side)

    @property
    def connection_count(self) -> int:
        """Connections currently proxied."""
        with self._lock:
            return len(self._links)

    def _end_links(self, *, abort: bool, side: str = "both") -> None:
        if side not in ("client", "server", "both"):
            raise ValueError(f"side must be 'client', 'server' or 'both', not {side!r}")
        with self._lock:
            links = list(self._links)
            self._links.clear()
            if abort:
                self.resets += len(links)
        for link in links:
            self._close_link(link, abort=abort, side=side)

    def _close_link(self, link: _Link, *, abort: bool, side: str = "both") -> None:
        link.closed = True
        link.aborted = abort
        link.side = side
        with self._lock:
            self._healed.notify_all()  # pumps held by a blackhole give up
        for name, sock in (("client", link.client), ("server", link.server)):
            if sock is None:
                continue
            if side in ("both", name):
                close_socket(sock, abort=abort)
            else:
                # Leave the peer's connection open and silent (half-open);
                # it is released when the proxy closes.
                self._orphans.append(sock)

    # --------------------------------------------------------------- workers

    def _start(self, target: object, role: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=f"fault-proxy-{self.address[1]}-{role}", daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    close_socket(client)
                    return
                link = _Link(client)
                self._links.add(link)
                self.connections_accepted += 1
            self._start(self._open, "open", link)

    def _open(self, link: _Link) -> None:
        # A blackholed path also swallows the SYN: wait for the heal.
        with self._lock:
            while self._faults["up"].blackhole and not link.closed and not self._closed:
                self._healed.wait(0.1)
            if link.closed or self._closed:
                return
        try:
            server = socket.create_connection(self.target, timeout=5)
            server.settimeout(None)
        except OSError as exc:
            logger.debug("proxy: target unreachable: %s", exc)
            with self._lock:
                self._links.discard(link)
            close_socket(link.client, abort=True)
            return
        with self._lock:
            if link.closed:
                # The fault hit while this side was being connected: give it
                # the same end, if the fault was aimed at it; otherwise it
                # stays open and silent, half-open like the rest.
                if link.side in ("both", "server"):
                    close_socket(server, abort=link.aborted)
                else:
                    self._orphans.append(server)
                return
            link.server = server
        self._start(self._pump, "up", link, "up", link.client, server)
        self._start(self._pump, "down", link, "down", server, link.client)

    def _pump(self, link: _Link, direction: str, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(_CHUNK)
            except OSError:
                data = b""
            if not self._forward(link, direction, data, sink):
                return

    def _forward(self, link: _Link, direction: str, data: bytes, sink: socket.socket) -> bool:
        """Pass ``data`` on (``b""``: pass the FIN on); False once the link is done."""
        with self._lock:
            # A blackhole holds everything, the end of the stream included.
            while self._faults[direction].blackhole and not link.closed and not self._closed:
                self._healed.wait(0.1)
            if link.closed or self._closed:
                return False
            if not data:
                try:
                    sink.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return False
            faults = self._faults[direction]
            delay = faults.latency + (self._rng.uniform(-faults.jitter, faults.jitter) if faults.jitter else 0.0)
            pieces = [data]
            if faults.slice_size:
                pieces = []
                pos = 0
                while pos < len(data):
                    size = self._rng.randint(1, faults.slice_size)
                    pieces.append(data[pos : pos + size])
                    pos += size
            if faults.bandwidth:
                # Pace in steps of 20 ms worth of bytes, waiting before each.
                step = max(1, int(faults.bandwidth / 50))
                pieces = [p[i : i + step] for p in pieces for i in range(0, len(p), step)]
        if delay > 0:
            time.sleep(delay)  # a delay line: this direction's bytes wait, in order
        for piece in pieces:
            if faults.limit_bytes is not None and link.forwarded[direction] + len(piece) > faults.limit_bytes:
                allowed = max(0, faults.limit_bytes - link.forwarded[direction])
                try:
                    sink.sendall(piece[:allowed])
                    with self._lock:
                        self.bytes_forwarded[direction] += allowed
                except OSError:
                    pass
                with self._lock:
                    self._links.discard(link)
                    self.resets += 1
                self._close_link(link, abort=True)
                return False
            if faults.bandwidth:
                time.sleep(len(piece) / faults.bandwidth)
            try:
                sink.sendall(piece)
            except OSError:
                return False
            link.forwarded[direction] += len(piece)
            with self._lock:  # several links' pumps add to the same counter
                self.bytes_forwarded[direction] += len(piece)
        return True

    # ---------------------------------------------------------------- ending

    def close(self) -> None:
        """Stop listening, close every connection and join every thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._healed.notify_all()
        close_socket(self._listener)
        self._end_links(abort=True)
        for sock in self._orphans:
            close_socket(sock, abort=True)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5.0)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
