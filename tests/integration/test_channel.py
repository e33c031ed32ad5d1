"""Both front ends' channels over real loopback TCP, with the fault proxy in between.

Each test takes ``front`` (tests/support/fronts.py): it runs once with the
threaded API and once with the asyncio API behind the same calls."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import reliable_tcp as rt
from fronts import Front
from helpers import UNIT, Worker, fast_options, wait_for
from reliable_tcp.testing import FaultProxy


@pytest.fixture
def listener(front: Front) -> Iterator[Any]:
    with front.listen(("127.0.0.1", 0), **fast_options()) as lst:
        yield lst


@pytest.fixture
def proxied(front: Front, listener: Any) -> Iterator[tuple[FaultProxy, Any, Any]]:
    """A client and server channel joined through a fault proxy."""
    with FaultProxy(listener.address) as proxy:
        client = front.connect(proxy.address, **fast_options())
        server = listener.accept(timeout=5)
        try:
            yield proxy, client, server
        finally:
            for channel in (client, server):
                channel.abort()


def test_messages_flow_both_ways_and_close_ends_the_stream(front: Front, listener: Any) -> None:
    client = front.connect(listener.address, **fast_options())
    server = listener.accept(timeout=5)
    assert client.state is rt.ChannelState.CONNECTED and client.session_id == server.session_id
    assert client.send(b"hello") == 1
    assert server.recv(timeout=5) == b"hello"
    server.send(b"world")
    assert client.recv(timeout=5) == b"world"
    client.send_many([b"a", b"b", b"c"])
    got: list[bytes] = []
    while len(got) < 3:
        got += server.recv_many(timeout=5)
    assert got == [b"a", b"b", b"c"]
    client.close()
    assert client.state is rt.ChannelState.CLOSED
    with pytest.raises(rt.ChannelClosed):
        server.recv(timeout=5)
    with pytest.raises(rt.ChannelClosed):
        server.send(b"late")
    with pytest.raises(rt.ChannelClosed):
        client.send(b"late")
    client.close()  # idempotent
    server.close()
    stats = client.statistics()
    assert stats.messages_sent == 4 and stats.messages_received == 1 and stats.unacked_messages == 0


def test_messages_of_every_size_arrive_whole_however_reads_split_them(front: Front, listener: Any) -> None:
    """The threaded reader decodes frames where its reads put them (a frame
    larger than its 256 KiB buffer gets room of its own); asyncio reads
    into a buffer its connections share. Small and large messages, up to
    the 1 MiB limit, interleaved, arrive whole and in order both ways."""
    client = front.connect(listener.address, **fast_options())
    server = listener.accept(timeout=5)
    sizes = [1, 20, 1000, 16 * 1024 - 1, 16 * 1024, 100_000, 300 * 1024, 1024 * 1024, 7, 64 * 1024, 1024 * 1024, 3]
    sent = [bytes([i]) * size + bytes(range(256))[: size % 256] for i, size in enumerate(sizes)]
    for sender, receiver in ((client, server), (server, client)):
        for message in sent:
            sender.send(message)
        for message in sent:
            got = receiver.recv(timeout=10)
            assert len(got) == len(message) and got == message
    client.close()
    server.close()


def test_close_with_data_in_flight_delivers_it_all(front: Front, listener: Any) -> None:
    client = front.connect(listener.address, **fast_options())
    server = listener.accept(timeout=5)
    for i in range(2000):
        client.send(b"%d" % i)
    client.close(timeout=10)
    received = list(server)  # iteration ends at the clean close
    assert received == [b"%d" % i for i in range(2000)]
    server.close()


def _stream(sender: Any, receiver: Any, count: int, tag: bytes) -> tuple[Worker, Worker, list[bytes]]:
    received: list[bytes] = []

    def send() -> None:
        for i in range(count):
            sender.send(tag + b"%d" % i, timeout=30 * UNIT)

    def recv() -> None:
        while len(received) < count:
            received.append(receiver.recv(timeout=30 * UNIT))

    workers = Worker(send, f"send-{tag.decode()}"), Worker(recv, f"recv-{tag.decode()}")
    for worker in workers:
        worker.start()
    return workers[0], workers[1], received


FAULTS = {
    "blackhole": lambda proxy: (proxy.blackhole(), time.sleep(0.6 * UNIT), proxy.heal()),
    "reset": lambda proxy: proxy.reset(),
    "reset-client-side": lambda proxy: proxy.reset(side="client"),
    "reset-server-side": lambda proxy: proxy.reset(side="server"),
    "close": lambda proxy: proxy.close_connections(),
}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.timeout(120)
def test_exactly_once_in_order_across_faults(proxied: tuple[FaultProxy, Any, Any], fault: str) -> None:
    proxy, client, server = proxied
    count, faults = 10_000, 5
    up = _stream(client, server, count, b"u")
    down = _stream(server, client, count, b"d")
    up_received, down_received = up[2], down[2]
    for n in range(1, faults + 1):
        # Each fault lands mid-stream: wait for progress first.
        target = n * count // (faults + 2)
        wait_for(lambda: len(up_received) >= target, 60, "progress")  # noqa: B023 - called at once
        resumes = client.statistics().resumes
        FAULTS[fault](proxy)
        wait_for(lambda: client.statistics().resumes > resumes, 30, f"resume after {fault} #{n}")  # noqa: B023
    for worker in (*up[:2], *down[:2]):
        worker.result()
    assert up_received == [b"u%d" % i for i in range(count)]
    assert down_received == [b"d%d" % i for i in range(count)]
    client.flush(timeout=10)
    server.flush(timeout=10)
    stats = client.statistics()
    assert stats.resumes >= faults and stats.unacked_messages == 0
    assert server.statistics().duplicates_dropped + client.statistics().duplicates_dropped == 0


@pytest.mark.parametrize("fault", ["reset", "blackhole", "close"])
@pytest.mark.timeout(120)
def test_mixed_fronts_exactly_once_across_faults(mixed_fronts: tuple[Any, Any], fault: str) -> None:
    """A threaded client with an asyncio server, and the reverse: one wire protocol."""
    client_front, server_front = mixed_fronts
    count, faults = 4000, 3
    with server_front.listen(("127.0.0.1", 0), **fast_options()) as lst, FaultProxy(lst.address) as proxy:
        client = client_front.connect(proxy.address, **fast_options())
        server = lst.accept(timeout=5)
        try:
            up = _stream(client, server, count, b"u")
            down = _stream(server, client, count, b"d")
            for n in range(1, faults + 1):
                target = n * count // (faults + 2)
                wait_for(lambda: len(up[2]) >= target and len(down[2]) >= target, 60, "progress")  # noqa: B023
                resumes = client.statistics().resumes
                FAULTS[fault](proxy)
                wait_for(lambda: client.statistics().resumes > resumes, 30, f"resume after {fault} #{n}")  # noqa: B023
            for worker in (*up[:2], *down[:2]):
                worker.result()
            assert up[2] == [b"u%d" % i for i in range(count)]
            assert down[2] == [b"d%d" % i for i in range(count)]
            client.close(timeout=10)
            with pytest.raises(rt.ChannelClosed):
                server.recv(timeout=5)
            server.close()
        finally:
            client.abort()
            server.abort()


def test_blackholed_link_is_detected_within_dead_after(proxied: tuple[FaultProxy, Any, Any]) -> None:
    proxy, client, server = proxied
    dead_after = 0.4 * UNIT
    wait_for(lambda: client.statistics().last_rtt is not None, 5, "a heartbeat round trip")
    start = time.monotonic()
    proxy.blackhole()
    wait_for(lambda: client.state is rt.ChannelState.DISCONNECTED, 10, "client verdict")
    client_detect = time.monotonic() - start
    wait_for(lambda: server.state is rt.ChannelState.DISCONNECTED, 10, "server verdict")
    server_detect = time.monotonic() - start
    assert client_detect < dead_after + 1.0 * UNIT
    assert server_detect < dead_after + 1.0 * UNIT
    detection = client.statistics().last_detection_time
    assert detection is not None and dead_after <= detection < dead_after + 0.5 * UNIT
    proxy.heal()
    wait_for(lambda: client.state is rt.ChannelState.CONNECTED and server.state is rt.ChannelState.CONNECTED, 10, "resume")
    client.send(b"after")
    assert server.recv(timeout=5) == b"after"
    recovery = client.statistics().last_recovery_time
    assert recovery is not None and recovery > 0


def test_expired_resume_window_raises_session_lost_with_the_unacked_messages(front: Front, listener: Any) -> None:
    with front.listen(("127.0.0.1", 0), **fast_options(resume_window=1.0 * UNIT)) as short, FaultProxy(short.address) as proxy:
        client = front.connect(proxy.address, **fast_options(resume_window=1.0 * UNIT))
        server = short.accept(timeout=5)
        client.send(b"delivered")
        assert server.recv(timeout=5) == b"delivered"
        client.flush(timeout=5)
        proxy.blackhole()
        client.send(b"lost-1")
        client.send(b"lost-2")
        with pytest.raises(rt.SessionLost) as info:
            client.recv(timeout=10)
        assert [payload for _, payload in info.value.unacked] == [b"lost-1", b"lost-2"]
        assert [seq for seq, _ in info.value.unacked] == [2, 3]
        with pytest.raises(rt.SessionLost):
            client.send(b"more")
        with pytest.raises(rt.SessionLost):
            server.recv(timeout=10)
        assert client.state is rt.ChannelState.FAILED
        wait_for(lambda: short.session_count == 0, 5, "the server to forget the session")
        with pytest.raises(rt.SessionLost):
            client.close()
        server.close()


def test_backpressure_blocks_send_and_times_out_with_nothing_queued(front: Front) -> None:
    options = fast_options(window_messages=8, max_queued_messages=4)
    with front.listen(("127.0.0.1", 0), **options) as lst:
        client = front.connect(lst.address, **options)
        server = lst.accept(timeout=5)
        sent = 0
        with pytest.raises(TimeoutError):
            while True:
                client.send(b"%d" % sent, timeout=0.3 * UNIT)
                sent += 1
        # The receiver's queue (4) and the window (8) bound what was accepted.
        assert 4 + 8 <= sent <= 4 + 8 + 8
        assert client.statistics().unacked_messages == 8
        # Stalling longer than dead_after must not kill the link: we chose to stop reading.
        time.sleep(1.0 * UNIT)  # the test's subject is a pause; nothing is synchronised by it
        assert client.statistics().disconnects == 0
        received = [server.recv(timeout=5) for _ in range(sent)]
        assert received == [b"%d" % i for i in range(sent)]
        client.send(b"next", timeout=5)
        assert server.recv(timeout=5) == b"next"
        client.close()
        server.close()


def test_connect_retries_until_the_listener_starts(front: Front) -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    worker = Worker(lambda: front.connect(("127.0.0.1", port), timeout=20 * UNIT, **fast_options()), "connect")
    worker.start()
    time.sleep(0.3 * UNIT)  # let a few attempts be refused first
    with front.listen(("127.0.0.1", port), **fast_options()) as lst:
        client = worker.result()
        server = lst.accept(timeout=5)
        client.send(b"late start")
        assert server.recv(timeout=5) == b"late start"
        client.close()
        server.close()


def test_connect_gives_up_after_its_timeout(front: Front) -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    start = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        front.connect(("127.0.0.1", port), timeout=0.5 * UNIT, **fast_options())
    assert time.monotonic() - start < 5 * UNIT
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_full_server_rejects_new_sessions_with_a_clear_error(front: Front) -> None:
    with front.listen(("127.0.0.1", 0), max_sessions=1, **fast_options()) as lst:
        first = front.connect(lst.address, **fast_options())
        # Busy is worth retrying: connect tries until its timeout, then says why.
        with pytest.raises(TimeoutError) as info:
            front.connect(lst.address, timeout=1.0 * UNIT, **fast_options())
        assert isinstance(info.value.__cause__, rt.RejectedByPeer) and "SERVER_BUSY" in str(info.value.__cause__)
        server = lst.accept(timeout=5)
        first.send(b"still served")
        assert server.recv(timeout=5) == b"still served"
        first.close()
        server.close()


def test_state_change_events_are_reported_outside_the_lock(
    front: Front, proxied: tuple[FaultProxy, Any, Any], listener: Any
) -> None:
    proxy, _, _ = proxied
    seen: list[rt.ChannelEvent] = []
    seen_lock = threading.Lock()

    holder: list[rt.Channel] = []

    def on_event(event: rt.ChannelEvent) -> None:
        # Calling back into the channel would deadlock if the lock were held.
        if holder:
            holder[0].statistics()
        with seen_lock:
            seen.append(event)

    channel = front.connect(proxy.address, on_event=on_event, **fast_options())
    holder.append(channel)
    server = listener.accept(timeout=5)
    channel.send(b"x")
    proxy.reset()
    wait_for(lambda: any(e.kind == "resumed" for e in seen), 10, "resumed event")
    channel.close()
    server.close()
    kinds = [e.kind for e in seen]
    assert kinds[0] == "connected" and "disconnected" in kinds and kinds[-1] == "closed"
    assert kinds.index("disconnected") < kinds.index("resumed")


def test_message_too_large_and_wrong_type_are_usage_errors(front: Front, listener: Any) -> None:
    client = front.connect(listener.address, **fast_options(max_message_size=1024))
    server = listener.accept(timeout=5)
    with pytest.raises(rt.MessageTooLarge):
        client.send(b"x" * 1025)
    with pytest.raises(rt.UsageError):
        client.send("text")  # type: ignore[arg-type]
    client.send(b"ok")
    assert server.recv(timeout=5) == b"ok"
    client.close()
    server.close()


def test_recv_timeout_and_unknown_options(front: Front, listener: Any) -> None:
    client = front.connect(listener.address, **fast_options())
    server = listener.accept(timeout=5)
    with pytest.raises(TimeoutError):
        server.recv(timeout=0.05)
    with pytest.raises(TimeoutError):
        listener.accept(timeout=0.05)
    with pytest.raises(TypeError, match="unknown options"):
        front.connect(listener.address, heartbeat=3)
    client.close()
    server.close()


def test_many_clients_at_once(front: Front, listener: Any) -> None:
    clients = [front.connect(listener.address, **fast_options()) for _ in range(20)]
    servers = {}
    for _ in clients:
        channel = listener.accept(timeout=5)
        servers[channel.session_id] = channel
    for i, client in enumerate(clients):
        client.send(b"%d" % i)
    for i, client in enumerate(clients):
        assert servers[client.session_id].recv(timeout=5) == b"%d" % i
    for client in clients:
        client.close()
    for server in servers.values():
        server.close()
    wait_for(lambda: listener.session_count == 0, 5, "sessions to be forgotten")
