"""The asyncio connection hands a large read to its owner in slices, one per
turn of the loop, so one peer's flood of tiny frames can't hold the loop
(and every other session's heartbeats) for the whole of its decoding."""

from __future__ import annotations

import asyncio
from typing import Any

from reliable_tcp.asyncio._link import READ_SLICE, LinkProtocol


class Transport(asyncio.Transport):
    """Only the reading switch, recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = True
        self.switches: list[bool] = []

    def pause_reading(self) -> None:
        self.reading = False
        self.switches.append(False)

    def resume_reading(self) -> None:
        self.reading = True
        self.switches.append(True)

    def is_reading(self) -> bool:
        return self.reading

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Owner:
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.events: list[str] = []

    def link_data(self, link: LinkProtocol, data: bytes) -> None:
        self.received.append(data)
        self.events.append("data")

    def link_lost(self, link: LinkProtocol, error: BaseException | None) -> None:
        self.events.append("lost")

    def link_writable(self, link: LinkProtocol) -> None:
        pass


async def settle(turns: int = 100) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


def make() -> tuple[LinkProtocol, Owner, Transport]:
    owner, transport = Owner(), Transport()
    link = LinkProtocol(owner)
    link.connection_made(transport)
    return link, owner, transport


def test_a_large_read_reaches_the_owner_in_slices_with_the_loop_free_between_them() -> None:
    async def run() -> None:
        link, owner, transport = make()
        data = bytes(range(256)) * (10 * READ_SLICE // 256 + 3)
        link.data_received(data)
        assert owner.received == [data[:READ_SLICE]]
        assert not transport.reading  # the backlog is one read's worth, no more
        assert link.has_pending_input()  # the loop is late, not the peer
        # Another session's callback, scheduled now, runs before the rest is handed over.
        asyncio.get_running_loop().call_soon(owner.events.append, "other")
        await settle()
        assert owner.events.index("other") == 2  # one slice was already due; the rest waits its turn
        assert b"".join(owner.received) == data
        assert all(len(piece) <= READ_SLICE for piece in owner.received)
        assert transport.reading and transport.switches == [False, True]
        assert not link.has_pending_input()

    asyncio.run(run())


def test_bytes_that_arrive_behind_a_backlog_keep_their_order() -> None:
    async def run() -> None:
        link, owner, _ = make()
        first, second = b"a" * (3 * READ_SLICE), b"b" * 100
        link.data_received(first)
        link.data_received(second)  # e.g. a TLS transport's last decrypted bytes
        await settle()
        assert b"".join(owner.received) == first + second

    asyncio.run(run())


def test_a_pause_by_the_owner_stops_the_backlog_and_a_resume_continues_it() -> None:
    async def run() -> None:
        link, owner, transport = make()
        data = b"x" * (4 * READ_SLICE)
        link.data_received(data)
        link.pause_reading()  # the owner's queue is full
        await settle()
        assert owner.received == [data[:READ_SLICE]]
        link.resume_reading()
        assert not transport.reading  # the backlog goes first
        await settle()
        assert b"".join(owner.received) == data
        assert transport.reading

    asyncio.run(run())


def test_a_small_read_goes_straight_through() -> None:
    async def run() -> None:
        link, owner, transport = make()
        link.data_received(b"y" * READ_SLICE)
        assert owner.received == [b"y" * READ_SLICE] and transport.switches == []

    asyncio.run(run())


def test_a_lost_connection_drops_its_backlog() -> None:
    async def run() -> None:
        link, owner, _ = make()
        link.data_received(b"z" * (3 * READ_SLICE))
        link.connection_lost(ConnectionResetError())
        await settle()
        assert owner.events == ["data", "lost"]

    asyncio.run(run())


def test_waiting_input_is_seen_on_descriptors_above_1024() -> None:
    """A loop with a thousand sessions has descriptor numbers past 1,024,
    where select() raises ValueError: that used to read as "nothing waits",
    and a merely late loop could take its live peers for dead."""
    import resource
    import socket

    import pytest

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1100:
        pytest.skip(f"the descriptor limit ({hard}) can't reach past 1,024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1100) if hard == resource.RLIM_INFINITY else hard, hard))
    held: list[socket.socket] = []
    try:
        while True:  # about 1,100 connections' worth of descriptors
            a, b = socket.socketpair()
            held += [a, b]
            if b.fileno() > 1030:
                break
        ours, peer = held[-2], held[-1]
        assert peer.fileno() >= 1024

        class SocketTransport(Transport):
            def get_extra_info(self, name: str, default: Any = None) -> Any:
                return peer if name == "socket" else default

        async def run() -> None:
            link = LinkProtocol(Owner())
            link.connection_made(SocketTransport())
            assert not link.has_pending_input()
            ours.sendall(b"ping")
            assert link.has_pending_input()  # bytes wait: the peer is alive, the loop late

        asyncio.run(run())
    finally:
        for sock in held:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_connections_of_one_loop_read_into_one_buffer_and_each_keeps_its_own_bytes() -> None:
    """asyncio reads into get_buffer's memory (BufferedProtocol): on a
    selector loop every connection of the loop's thread gets the same
    buffer, and what arrived is copied out before the next read reuses it."""

    async def run() -> None:
        (first, first_owner, _), (second, second_owner, _) = make(), make()
        buffer = first.get_buffer(-1)
        assert second.get_buffer(-1) is buffer  # shared: no 256 KiB per read, nor per connection
        buffer[:5] = b"hello"
        first.buffer_updated(5)
        buffer[:6] = b"world!"  # the next read, another connection's
        second.buffer_updated(6)
        assert first_owner.received == [b"hello"] and second_owner.received == [b"world!"]
        big = bytes(range(256)) * (len(buffer) // 256)
        buffer[: len(big)] = big
        first.buffer_updated(len(big))  # a full read still goes out in slices
        buffer[:3] = b"new"
        await settle()
        assert b"".join(first_owner.received[1:]) == big

    asyncio.run(run())
