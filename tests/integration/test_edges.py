"""The promise at the edges: deadlines, first handshakes, close and abort, the listener's close.

"Exactly once, in order, or the owner is told exactly which" and "no call
outlives its timeout" where a user is most likely to find them broken.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import reliable_tcp as rt
from helpers import UNIT, Worker, fast_options, wait_for
from reliable_tcp.testing import FaultProxy

#: How far past its timeout a call may return (scheduling slack on a busy machine).
MARGIN = 0.5 * UNIT


@pytest.fixture
def listener() -> Iterator[rt.Listener]:
    with rt.listen(("127.0.0.1", 0), **fast_options()) as lst:
        yield lst


class UnansweredSyns:
    """A port whose accept backlog is full: a connect() to it blocks in SYN_SENT,
    as with a pulled cable (Linux drops SYNs to a full backlog)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.address: tuple[str, int] = self.sock.getsockname()
        self.fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(self.address)
            self.fillers.append(filler)
        wait_for(lambda: _blocks(self.address), 5, "the backlog to fill")

    def close(self) -> None:
        for filler in self.fillers:
            filler.close()
        self.sock.close()


def _blocks(address: tuple[str, int]) -> bool:
    probe = socket.socket()
    probe.settimeout(0.2)
    try:
        probe.connect(address)
    except TimeoutError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


def test_connect_returns_within_its_timeout_while_syns_go_unanswered() -> None:
    full = UnansweredSyns()
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            # Each attempt alone may wait 5 s for its SYN; the call may not.
            rt.connect(full.address, timeout=1.0 * UNIT, **fast_options(handshake_timeout=5.0))
        assert time.monotonic() - started < 1.0 * UNIT + MARGIN
        assert info.value.__cause__ is None or isinstance(info.value.__cause__, OSError)
    finally:
        full.close()
    # The no_leaked_threads fixture checks that the connector is gone.


def test_connect_to_a_server_that_never_answers_the_handshake_times_out_and_loses_nothing() -> None:
    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def swallow() -> None:
        silent.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])  # read nothing, answer nothing
            except TimeoutError:
                continue

    worker = Worker(swallow, "silent-server")
    worker.start()
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            rt.connect(silent.getsockname(), timeout=2.0 * UNIT, **fast_options(handshake_timeout=0.3, resume_window=0.5))
        # No session ever existed: a timeout chained to why, never "resume window expired".
        assert not isinstance(info.value, rt.SessionLost)
        assert time.monotonic() - started < 2.0 * UNIT + MARGIN
        assert len(accepted) >= 2, "connect gave up instead of retrying"
    finally:
        stop.set()
        worker.result()
        for sock in accepted:
            sock.close()
        silent.close()


def test_close_keeps_its_deadline_while_reconnects_go_unanswered(listener: rt.Listener) -> None:
    with FaultProxy(listener.address) as proxy:
        client = rt.connect(proxy.address, **fast_options(handshake_timeout=5.0))
        server = listener.accept(timeout=5)
        proxy.blackhole()
        client.send(b"never acknowledged")
        wait_for(lambda: client.state is rt.ChannelState.DISCONNECTED, 5, "the outage to be detected")
        started = time.monotonic()
        with pytest.raises(rt.SessionLost) as info:
            client.close(timeout=1.0 * UNIT)
        assert time.monotonic() - started < 1.0 * UNIT + MARGIN
        assert [payload for _, payload in info.value.unacked] == [b"never acknowledged"]
        server.abort()


def test_every_connection_attempt_is_retried_until_connects_deadline_under_load(listener: rt.Listener) -> None:
    # Many sequential connects while earlier sessions stay open: none may be
    # lost during establishment (a busy server gets retried, not given up on).
    channels = []
    try:
        for _ in range(150):
            channels.append(rt.connect(listener.address, timeout=30, **fast_options()))
        assert all(channel.state is rt.ChannelState.CONNECTED for channel in channels)
        wait_for(lambda: listener.session_count == 150, 10, "every session to be registered")
    finally:
        for channel in channels:
            channel.abort()
        while True:  # drain what the listener offered, so its close has nothing left over
            try:
                listener.accept(timeout=0.01).abort()
            except TimeoutError:
                break


def test_many_channels_closed_at_once_leave_no_thread_behind(listener: rt.Listener) -> None:
    clients = [rt.connect(listener.address, **fast_options()) for _ in range(100)]
    servers = [listener.accept(timeout=5) for _ in clients]
    for client in clients:
        client.send(b"bye")
    closers = [Worker(lambda c=client: c.close(timeout=10), f"closer-{i}") for i, client in enumerate(clients)]
    started = time.monotonic()
    for closer in closers:
        closer.start()
    for server in servers:
        assert list(server) == [b"bye"]
        server.close()
    for closer in closers:
        closer.result(30)
    assert time.monotonic() - started < 10 * UNIT
    # no_leaked_threads: every reader, writer and connector of the 200 channels ended.


def test_abort_ends_the_peers_session_at_once_with_its_unacked_messages(listener: rt.Listener) -> None:
    client = rt.connect(listener.address, **fast_options(resume_window=60.0))
    server = listener.accept(timeout=5)
    client.send(b"one")
    assert server.recv(timeout=5) == b"one"
    server.send(b"for a client that is leaving")
    assert client.recv(timeout=5) == b"for a client that is leaving"
    client.abort()
    started = time.monotonic()
    with pytest.raises(rt.SessionLost) as info:
        server.recv(timeout=5)  # long before the 60 s resume window
    assert time.monotonic() - started < 2 * UNIT
    assert "aborted by the peer" in str(info.value)
    assert isinstance(info.value.__cause__, rt.RejectedByPeer)
    wait_for(lambda: listener.session_count == 0, 5, "the aborted session to be forgotten")
    with pytest.raises(rt.SessionLost):
        server.close()  # the first close reports it too


def test_abort_returns_what_it_discarded(listener: rt.Listener) -> None:
    with FaultProxy(listener.address) as proxy:
        client = rt.connect(proxy.address, **fast_options())
        server = listener.accept(timeout=5)
        proxy.blackhole()
        client.send(b"a")
        client.send(b"b")
        assert client.abort() == ((1, b"a"), (2, b"b"))
        assert client.abort() == ((1, b"a"), (2, b"b"))  # idempotent
        with pytest.raises(rt.ChannelClosed):
            client.send(b"c")
        server.abort()


def test_close_racing_a_sender_keeps_time_for_its_handshake_and_reports_nothing_delivered(listener: rt.Listener) -> None:
    client = rt.connect(listener.address, **fast_options())
    server = listener.accept(timeout=5)
    sent: list[int] = []
    stop = threading.Event()

    def keep_sending() -> None:
        with pytest.raises(rt.ChannelClosed):
            while not stop.is_set():
                client.send(b"%d" % len(sent), timeout=5)
                sent.append(len(sent))

    received: list[int] = []

    def keep_receiving() -> None:
        for message in server:
            received.append(int(message))

    sender, receiver = Worker(keep_sending, "sender"), Worker(keep_receiving, "receiver")
    sender.start()
    receiver.start()
    wait_for(lambda: len(sent) > 2000, 10, "the stream to be under way")
    started = time.monotonic()
    unacked: list[int] = []
    try:
        client.close(timeout=2.0 * UNIT)
    except rt.SessionLost as lost:
        unacked = [int(payload) for _, payload in lost.unacked]
    assert time.monotonic() - started < 2.0 * UNIT + MARGIN
    stop.set()
    sender.result()
    receiver.result()  # the server's iteration ended cleanly: no SessionLost there
    assert unacked == [], "a clean close reported messages as unacknowledged"
    assert received == sent[: len(received)] and len(received) == len(sent)
    server.close()


def test_close_delivers_what_the_peer_had_in_flight_toward_the_closer(listener: rt.Listener) -> None:
    client = rt.connect(listener.address, **fast_options())
    server = listener.accept(timeout=5)
    for i in range(500):
        server.send(b"%d" % i)
    client.close(timeout=10)  # while the server's 500 messages are on their way
    got = list(client)  # what arrived can still be read after close
    server.close()  # acknowledged by the close handshake: nothing to report
    assert got == [b"%d" % i for i in range(500)]


def test_the_listeners_close_leaves_the_owner_its_report() -> None:
    lst = rt.listen(("127.0.0.1", 0), **fast_options())
    proxy = FaultProxy(lst.address)
    try:
        client = rt.connect(proxy.address, **fast_options())
        server = lst.accept(timeout=5)
        proxy.blackhole()
        for i in range(3):
            server.send(b"%d" % i)
        lst.close(timeout=0.5 * UNIT)
        # The application's own calls say what was not delivered, however it ended.
        with pytest.raises(rt.SessionLost) as info:
            for _ in server:
                pass
        assert [payload for _, payload in info.value.unacked] == [b"0", b"1", b"2"]
        with pytest.raises(rt.SessionLost) as again:
            server.close()
        assert again.value.unacked == info.value.unacked
        client.abort()
    finally:
        lst.close()
        proxy.close()


def test_send_after_close_began_is_refused_with_nothing_queued(listener: rt.Listener) -> None:
    client = rt.connect(listener.address, **fast_options())
    server = listener.accept(timeout=5)
    client.close()
    with pytest.raises(rt.ChannelClosed):
        client.send(b"late")
    assert client.statistics().messages_sent == 0
    server.close()


def test_local_misuse_is_invalid_state_and_harms_nothing(listener: rt.Listener) -> None:
    client = rt.connect(listener.address, **fast_options())
    server = listener.accept(timeout=5)
    engine = client._session.engine  # the core directly: the shell never makes this mistake
    with pytest.raises(rt.InvalidState):
        engine.connection_made(time.monotonic())  # a second HELLO on an open session
    client.send(b"still fine")
    assert server.recv(timeout=5) == b"still fine"
    client.close()
    server.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.send("text"),
        lambda c: c.send(None),
        lambda c: c.send(5),
        lambda c: c.send_many([1]),  # bytes(1) would be b"\x00": a message nobody sent
        lambda c: c.send_many(["text"]),
        lambda c: c.send_many(b"one message, not an iterable of them"),
        lambda c: c.recv_many(0, timeout=5),
        lambda c: c.recv_many(0.5, timeout=5),
        lambda c: c.recv_many(True, timeout=5),
        lambda c: c.wait_acked(True, timeout=5),  # the compiled build would read True as message 1
        lambda c: c.wait_acked(1.5, timeout=5),
        lambda c: c.wait_acked(1, timeout="5"),
        lambda c: c.wait_acked(1, timeout=float("nan")),
        lambda c: c.close(timeout="soon"),
    ],
)
def test_a_wrong_argument_is_a_usage_error_and_harms_nothing(front: Any, call: Any) -> None:
    with front.listen(("127.0.0.1", 0), **fast_options()) as listener:
        client = front.connect(listener.address, **fast_options())
        server = listener.accept(timeout=10)
        try:
            client.send(b"before")
            assert server.recv(timeout=10) == b"before"
            server.send(b"waiting for the client")
            with pytest.raises(rt.UsageError):
                call(client)
            client.send(b"after")
            assert server.recv(timeout=10) == b"after"  # nothing was queued by the wrong call
            assert client.recv(timeout=10) == b"waiting for the client"  # nor taken
            client.close(timeout=10)
            server.close(timeout=10)
        finally:
            client.abort()
            server.abort()


@pytest.mark.parametrize(
    "call",
    [
        lambda c, listener: c.send(b"x", timeout="1"),
        lambda c, listener: c.send_many([b"x"], timeout=True),
        lambda c, listener: c.recv(timeout="1"),
        lambda c, listener: c.recv(timeout=float("nan")),
        lambda c, listener: c.recv_many(4, timeout=[1]),
        lambda c, listener: c.flush(timeout="1"),
        lambda c, listener: listener.accept(timeout="1"),
    ],
)
def test_a_timeout_that_is_not_a_number_is_a_usage_error(listener: rt.Listener, call: Any) -> None:
    client = rt.connect(listener.address, **fast_options())
    server = listener.accept(timeout=5)
    server.send(b"ready")
    with pytest.raises(rt.UsageError, match="timeout"):
        call(client, listener)
    assert client.recv(timeout=5) == b"ready"
    client.close()
    server.close()


def test_every_call_raises_a_fresh_exception_chained_to_one_cause() -> None:
    with rt.listen(("127.0.0.1", 0), **fast_options(resume_window=0.5 * UNIT)) as short, FaultProxy(short.address) as proxy:
        client = rt.connect(proxy.address, **fast_options(resume_window=0.5 * UNIT))
        server = short.accept(timeout=5)
        proxy.blackhole()
        client.send(b"x")
        errors = []
        for _ in range(3):
            with pytest.raises(rt.SessionLost) as info:
                client.recv(timeout=10)
            errors.append(info.value)
        assert len({id(e) for e in errors}) == 3
        assert all(e.unacked == ((1, b"x"),) for e in errors)
        assert len({id(e.__cause__) for e in errors}) == 1
        with pytest.raises(rt.SessionLost):
            client.close()
        server.abort()


def test_a_reconnect_rides_out_an_offline_resolver(front: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Connected by host name; the link drops and, for a while, the resolver
    answers "no such name" (EAI_NONAME, as an offline one does in airplane
    mode). The session must keep retrying inside its resume window and
    resume once names resolve again, not end with SessionLost."""
    real = socket.getaddrinfo
    offline = threading.Event()
    refused: list[str] = []

    def resolver(host: Any, *args: Any, **kwargs: Any) -> Any:
        if offline.is_set() and host == "localhost":
            refused.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    with front.listen(("127.0.0.1", 0), **fast_options()) as lst, FaultProxy(lst.address) as proxy:
        client = front.connect(("localhost", proxy.address[1]), **fast_options())
        try:
            server = lst.accept(timeout=10)
            client.send(b"before")
            assert server.recv(timeout=10) == b"before"
            offline.set()
            proxy.reset()
            wait_for(lambda: len(refused) >= 3, 20, "reconnects to meet the offline resolver")
            client.send(b"while offline")  # queued: the session lives on
            offline.clear()
            assert server.recv(timeout=20) == b"while offline"
            assert client.statistics().resumes >= 1
            client.close(timeout=10)
            server.close(timeout=10)
        finally:
            offline.clear()
            client.abort()


def test_a_path_that_dies_after_every_handshake_is_redialled_no_faster_than_a_dead_one(front: Any) -> None:
    """Issue 25, item 7: every connection completes its handshake and is
    reset a moment later (a flapping Wi-Fi, a broken middlebox). Such a
    connection proves nothing, so the backoff keeps growing: reaching six
    resumes takes at least the sum of six growing delays (0.05 + 0.1 + 0.2
    + 0.4 + 0.8 + 1.0 s without jitter). Restarting the backoff after each
    handshake (the bug) took about a second, forever, for an idle session."""
    from reliable_tcp.common.backoff import Backoff

    accept_size = 12 + 41  # the frame header and an ACCEPT without options (docs/protocol.md sections 2, 3)
    backoff = Backoff(initial=0.05, maximum=1.0, jitter=0.0)
    with front.listen(("127.0.0.1", 0), **fast_options()) as lst, FaultProxy(lst.address) as proxy:
        proxy.set_faults("down", limit_bytes=accept_size)  # the ACCEPT passes; the next frame down resets
        client = front.connect(proxy.address, backoff=backoff, **fast_options())
        started = time.monotonic()
        try:
            wait_for(lambda: client.statistics().resumes >= 6, 30, "six resumes over the flapping path")
            elapsed = time.monotonic() - started
            assert elapsed >= 0.05 + 0.1 + 0.2 + 0.4 + 0.8 + 1.0, f"six resumes in {elapsed:.2f} s: the backoff restarted"
            assert client.state is not rt.ChannelState.FAILED
        finally:
            client.abort()


@pytest.mark.timeout(120)
def test_an_abort_reaches_a_peer_that_floods_the_aborting_side(front: Any) -> None:
    """The side that aborts has the peer's bytes waiting unread: closing at
    once would reset the connection, and the reset could destroy the REJECT
    ABORTED in the peer's receive buffer before it was read; the peer then
    saw a broken pipe and tried to resume for its whole resume window. The
    aborting side ends in order (FIN, the peer's EOF), so the peer always
    learns of the abort at once. Several rounds: the reset won only some."""
    for _ in range(5):
        with front.listen(("127.0.0.1", 0), **fast_options()) as listener:
            client = front.connect(listener.address, **fast_options(resume_window=60.0))
            server = listener.accept(timeout=10)
            stop = threading.Event()

            def flood(client: Any = client, stop: threading.Event = stop) -> None:
                with contextlib.suppress(rt.ReliableTCPError, TimeoutError):
                    while not stop.is_set():
                        client.send(b"x" * 65536, timeout=30)

            flooding = Worker(flood, "flood")
            flooding.start()
            try:
                server.recv(timeout=10)
                server.abort()
                started = time.monotonic()
                wait_for(lambda: client.state is rt.ChannelState.FAILED, 10,  # noqa: B023
                         "the flooding side to learn of the abort (not to resume)")
                assert time.monotonic() - started < 5 * UNIT
                assert client.statistics().resumes == 0
            finally:
                stop.set()
                client.abort()
                flooding.result(30)
