"""Hostile clients against a live listener while a legitimate client streams.

Every attack must end with a typed verdict on our side (a REJECT with its
reason where the protocol allows one) and a closed connection, while the
legitimate session sees zero anomalies and the listener keeps serving.
Each test runs against both front ends' listeners (``front``).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import reliable_tcp as rt
from fronts import Front
from helpers import UNIT, Worker, fast_options, wait_for
from reliable_tcp.core import frames as f
from reliable_tcp.testing.checker import check_stream

# The legit stream's liveness is not what these tests judge, so it is given
# room: at a 0.4 s dead_after, a CI run with a second suite beside it once
# starved the process long enough for one (healed) disconnect.
OPTIONS = fast_options(heartbeat_interval=0.5 * UNIT, dead_after=2.0 * UNIT, handshake_timeout=1.0 * UNIT, resume_window=3.0 * UNIT)


class LegitStream:
    """A well-behaved client streaming numbered messages both ways in the background."""

    def __init__(self, front: Front, listener: Any) -> None:
        self.client = front.connect(listener.address, **OPTIONS)
        self.server = listener.accept(timeout=5)
        self.stop = threading.Event()
        self.sent = {"up": 0, "down": 0}
        self.got: dict[str, list[int]] = {"up": [], "down": []}
        self.workers = [
            Worker(lambda: self._send(self.client, "up"), "legit-send-up"),
            Worker(lambda: self._send(self.server, "down"), "legit-send-down"),
            Worker(lambda: self._recv(self.server, "up"), "legit-recv-up"),
            Worker(lambda: self._recv(self.client, "down"), "legit-recv-down"),
        ]
        for worker in self.workers:
            worker.start()

    def _send(self, channel: Any, direction: str) -> None:
        while not self.stop.is_set():
            n = self.sent[direction]
            channel.send_many([b"%d" % i for i in range(n, n + 50)])
            self.sent[direction] = n + 50
            self.stop.wait(0.005)  # a steady trickle, not a flood

    def _recv(self, channel: Any, direction: str) -> None:
        try:
            while True:
                self.got[direction].extend(int(m) for m in channel.recv_many())
        except rt.ChannelClosed:
            return

    def finish(self) -> None:
        self.stop.set()
        for worker in self.workers[:2]:
            worker.result()
        self.client.flush(timeout=10)
        self.server.flush(timeout=10)
        self.client.close()
        for worker in self.workers[2:]:
            worker.result()
        self.server.close()
        for direction in ("up", "down"):
            sent = list(range(self.sent[direction]))
            tally = check_stream(sent, sent, self.got[direction])
            assert tally.ok and tally.delivered == len(sent), tally.summary()
        assert self.client.statistics().disconnects == 0


@pytest.fixture
def served(front: Front) -> Iterator[tuple[Any, LegitStream]]:
    with front.listen(("127.0.0.1", 0), **OPTIONS) as listener:
        legit = LegitStream(front, listener)
        try:
            yield listener, legit
            legit.finish()
        finally:
            legit.stop.set()
            legit.client.abort()
            legit.server.abort()


def raw(listener: Any) -> socket.socket:
    sock = socket.create_connection(listener.address, timeout=10 * UNIT)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout * UNIT)
    data = b""
    with sock:
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return data
            except TimeoutError:
                raise AssertionError("the server kept the connection open") from None
            if not chunk:
                return data
            data += chunk


def rejection(data: bytes) -> f.RejectReason:
    frames = f.FrameDecoder(1 << 20).feed(data)
    rejects = [frame for frame in frames if isinstance(frame, f.Reject)]
    assert rejects, f"no REJECT in {frames}"
    return rejects[-1].reason


def opened(listener: Any) -> tuple[socket.socket, f.Accept]:
    """A raw connection that completed a real handshake."""
    sock = raw(listener)
    sock.sendall(f.encode(f.Hello(False, bytes(16), bytes(16), 1)))
    decoder = f.FrameDecoder(1 << 20)
    while True:
        frames = decoder.feed(sock.recv(4096))
        if frames:
            accept = frames[0]
            assert isinstance(accept, f.Accept)
            sock.sendall(f.encode(f.Ack(0)))  # confirm, as every client does after ACCEPT
            return sock, accept


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (os.urandom(64), None),
        (b"GET / HTTP/1.1\r\nHost: example\r\n\r\n", f.RejectReason.PROTOCOL_ERROR),
        (bytes.fromhex("160301020001000200") + os.urandom(100), f.RejectReason.PROTOCOL_ERROR),  # TLS ClientHello
        (b"RT\x07" + bytes(20), f.RejectReason.UNSUPPORTED_VERSION),
        (b"RT\x01\x63" + bytes(4) + bytes(4), f.RejectReason.PROTOCOL_ERROR),  # unknown type 0x63
        (b"RT\x01\x01\x7f\xff\xff\xff", f.RejectReason.PROTOCOL_ERROR),  # a 2 GiB HELLO
        (f.encode(f.Ping(1)), f.RejectReason.PROTOCOL_ERROR),  # not a HELLO first
        (f.encode(f.Hello(False, bytes(16), bytes(16), 1)) + f.encode(f.Ping(1)), f.RejectReason.PROTOCOL_ERROR),
    ],
    ids=["random-bytes", "http", "tls-client-hello", "wrong-version", "unknown-type", "huge-length", "ping-first",
         "data-before-handshake"],
)
def test_garbage_first_bytes_are_refused(
    served: tuple[Any, LegitStream], payload: bytes, reason: f.RejectReason | None
) -> None:
    listener, _ = served
    sock = raw(listener)
    sock.sendall(payload)
    data = read_until_closed(sock)
    if reason is not None:
        assert rejection(data) is reason
    assert listener.session_count == 1  # only the legitimate session


def test_wrong_checksum_is_refused(served: tuple[Any, LegitStream]) -> None:
    listener, _ = served
    hello = bytearray(f.encode(f.Hello(False, bytes(16), bytes(16), 1)))
    hello[20] ^= 0x01
    sock = raw(listener)
    sock.sendall(bytes(hello))
    assert rejection(read_until_closed(sock)) is f.RejectReason.PROTOCOL_ERROR


@pytest.mark.parametrize("partial", [b"", b"RT\x01", f.encode(f.Hello(False, bytes(16), bytes(16), 1))[:30]])
def test_silent_or_truncated_handshakes_time_out(served: tuple[Any, LegitStream], partial: bytes) -> None:
    listener, _ = served
    sock = raw(listener)
    sock.sendall(partial)
    start = time.monotonic()
    data = read_until_closed(sock)
    assert time.monotonic() - start < OPTIONS["handshake_timeout"] + 2 * UNIT  # type: ignore[operator]
    assert rejection(data) is f.RejectReason.HANDSHAKE_TIMEOUT


def test_slowloris_one_byte_per_tick_is_cut_at_the_handshake_timeout(served: tuple[Any, LegitStream]) -> None:
    listener, _ = served
    sock = raw(listener)
    hello = f.encode(f.Hello(False, bytes(16), bytes(16), 1))
    start = time.monotonic()
    try:
        for byte in hello:
            sock.sendall(bytes([byte]))
            time.sleep(0.1 * UNIT)  # the attack's own pace: 10 bytes a second
    except OSError:
        pass  # the server closed on us: the point
    data = read_until_closed(sock)
    assert time.monotonic() - start < OPTIONS["handshake_timeout"] + 2 * UNIT  # type: ignore[operator]
    assert rejection(data) is f.RejectReason.HANDSHAKE_TIMEOUT


@pytest.mark.parametrize(
    "frame",
    [
        f.Ack(99),  # an ack for a message never sent
        f.Data(5, 0, (b"jump",)),  # a sequence number that jumps
        f.Hello(False, bytes(16), bytes(16), 1),  # a second handshake
        f.Accept(False, bytes(range(16)), bytes(16), 1),  # a frame only a server sends
        f.Close(7),  # closing after messages never sent
    ],
    ids=["ack-never-sent", "seq-jump", "duplicate-handshake", "accept-from-client", "bad-close"],
)
def test_protocol_violations_inside_a_session(served: tuple[Any, LegitStream], frame: f.Frame) -> None:
    listener, _ = served
    sock, _ = opened(listener)
    victim = listener.accept(timeout=5)
    sock.sendall(f.encode(frame))
    assert rejection(read_until_closed(sock)) is f.RejectReason.PROTOCOL_ERROR
    with pytest.raises(rt.SessionLost) as info:
        victim.recv(timeout=5)
    assert isinstance(info.value.__cause__, rt.ProtocolError)
    victim.abort()
    wait_for(lambda: listener.session_count == 1, 5, "the failed session to be forgotten")
    assert listener.statistics().sessions_failed == 1


def test_corrupt_bytes_inside_a_session_drop_only_that_connection(served: tuple[Any, LegitStream]) -> None:
    listener, _ = served
    sock, _ = opened(listener)
    victim = listener.accept(timeout=5)
    sock.sendall(os.urandom(200))
    read_until_closed(sock)
    # A corrupt stream is a transport failure: the session waits for a resume.
    wait_for(lambda: victim.state is rt.ChannelState.DISCONNECTED, 5, "the session to be detached")
    victim.abort()


def test_resume_with_a_wrong_secret_reveals_nothing(served: tuple[Any, LegitStream]) -> None:
    listener, legit = served
    session_id = bytes.fromhex(legit.client.session_id)
    answers = []
    for hello in (
        f.Hello(True, session_id, os.urandom(16), 1),  # the right session, a guessed secret
        f.Hello(True, os.urandom(16), os.urandom(16), 1),  # a session that does not exist
    ):
        sock = raw(listener)
        sock.sendall(f.encode(hello))
        answers.append(read_until_closed(sock))
    assert answers[0] == answers[1]
    assert rejection(answers[0]) is f.RejectReason.SESSION_UNKNOWN


def test_replayed_resume_handshake_is_refused(served: tuple[Any, LegitStream]) -> None:
    listener, _ = served
    with rt.listen(("127.0.0.1", 0), **OPTIONS) as other:
        from reliable_tcp.testing import FaultProxy

        with FaultProxy(other.address) as proxy:
            client = rt.connect(proxy.address, **OPTIONS)
            server = other.accept(timeout=5)
            recorded = f.Hello(True, bytes.fromhex(client.session_id), client._session.engine.secret, 1)
            proxy.reset()  # the client resumes: the secret rotates
            wait_for(lambda: client.statistics().resumes == 1, 10, "resume")
            client.send(b"proves it holds the new secret")
            assert server.recv(timeout=5) == b"proves it holds the new secret"
            sock = socket.create_connection(other.address, timeout=5)
            sock.sendall(f.encode(recorded))  # an attacker replays the recorded handshake
            assert rejection(read_until_closed(sock)) is f.RejectReason.SESSION_UNKNOWN
            client.send(b"still mine")
            assert server.recv(timeout=5) == b"still mine"
            client.close()
            server.close()


def test_a_peer_that_stops_reading_is_dropped_and_memory_stays_bounded(served: tuple[Any, LegitStream]) -> None:
    listener, _ = served
    sock, _ = opened(listener)
    victim = listener.accept(timeout=5)
    sent = 0
    with pytest.raises((TimeoutError, rt.SessionLost)):
        while True:  # the server application keeps sending to a client that never reads
            victim.send(b"x" * 65536, timeout=3 * UNIT)
            sent += 1
    # The window (16 MiB) bounds what the server holds for it, not the amount offered.
    assert victim.statistics().unacked_bytes <= 16 * 1024 * 1024
    wait_for(lambda: victim.state is not rt.ChannelState.CONNECTED, 10, "the silent peer to be declared dead")
    victim.abort()
    sock.close()


def test_flood_of_tiny_frames_is_cut_off_and_does_not_starve_others(served: tuple[Any, LegitStream]) -> None:
    listener, legit = served
    sock, _ = opened(listener)
    victim = listener.accept(timeout=5)
    before = len(legit.got["up"])
    flood = f.encode(f.Ping(1)) * 20_000
    deadline = time.monotonic() + 3 * UNIT
    try:
        while time.monotonic() < deadline:
            sock.sendall(flood)
    except OSError:
        pass  # cut off: the point
    # Over max_control_frames_per_second (50,000) the session fails with a typed error.
    with pytest.raises(rt.SessionLost) as info:
        victim.recv(timeout=10)
    assert "frames per second" in str(info.value)
    wait_for(lambda: len(legit.got["up"]) > before + 500, 10, "the legitimate stream to keep flowing")
    victim.abort()
    sock.close()
