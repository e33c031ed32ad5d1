"""Planned restarts (issue 29, item 3): ``listener.drain()`` on both fronts,
the retry hint clients honour, and ``rtcat -l`` on SIGTERM."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import reliable_tcp as rt
from helpers import UNIT, Worker, fast_options, free_port, wait_for
from reliable_tcp.common.listener import PENDING_RETRY_AFTER
from reliable_tcp.core.frames import FrameDecoder, Reject, RejectReason, retry_after
from reliable_tcp.testing import FaultProxy

ROOT = Path(__file__).resolve().parents[2]
RTCAT = [sys.executable, str(ROOT / "tools" / "rtcat")]
FAST = ["--heartbeat", str(0.1 * UNIT), "--dead-after", str(0.4 * UNIT)]


@pytest.mark.timeout(120)
def test_a_drained_durable_listener_hands_every_session_to_its_restart(front: Any, tmp_path: Path) -> None:
    """Three clients stream while their listener drains and a new one
    starts with the same journal: every message arrives exactly once, in
    order, across the two listeners; no client ever loses its session; the
    drained listener's channels say where their sessions went."""
    journal = str(tmp_path / "journal")
    port = free_port()
    options = fast_options(resume_window=60.0 * UNIT)
    clients, senders, received, consumers = [], [], {}, []
    stop = threading.Event()

    def consume(channel: Any, into: list[bytes]) -> None:
        """Take messages, each counted once committed: the restarted
        listener takes up after what this one committed, and delivers again
        what it could not commit."""
        while True:
            try:
                message = channel.recv(timeout=60)
                channel.commit()
            except rt.ChannelClosed:
                return
            into.append(message)

    listener = front.listen(("127.0.0.1", port), journal=journal, **options)
    try:
        for number in range(3):
            client = front.connect(("127.0.0.1", port), **options)
            clients.append(client)
            server = listener.accept(timeout=10)
            received[number] = []
            consumers.append(Worker(lambda s=server, r=received[number]: consume(s, r), f"consumer-{number}"))
            consumers[-1].start()

        def send(client: Any, tag: bytes) -> int:
            sent = 0
            while not stop.is_set():  # through the drain and the restart, until told to stop
                client.send(tag + b"-%d" % sent)
                sent += 1
            return sent

        senders = [Worker(lambda c=c, t=b"c%d" % n: send(c, t), f"sender-{n}") for n, c in enumerate(clients)]
        for sender in senders:
            sender.start()
        wait_for(lambda: all(len(r) >= 300 for r in received.values()), 30, "every stream under way")
        listener.drain(10.0 * UNIT, retry_after=0.5)
        for consumer in consumers:
            consumer.result()  # each ended with ChannelClosed once its session was handed over
        with pytest.raises(rt.ChannelClosed, match="waits in its journal"):
            server.recv(timeout=1)
        assert listener.draining
        assert all(client.state is rt.ChannelState.DISCONNECTED for client in clients)
    finally:
        listener.close()
    restarted = front.listen(("127.0.0.1", port), journal=journal, **options)
    try:
        by_tag: dict[bytes, Any] = {}
        for _ in range(3):
            channel = restarted.accept(timeout=10)
            assert channel.restored
            first = channel.recv(timeout=30)
            channel.commit()  # before another thread consumes
            by_tag[first.split(b"-")[0]] = (channel, [first])
        later = []
        for tag, (channel, into) in by_tag.items():
            later.append(Worker(lambda c=channel, r=into: consume(c, r), f"consumer-{tag.decode()}"))
            later[-1].start()
        wait_for(lambda: all(len(into) >= 100 for _, into in by_tag.values()), 30, "every stream going on after the restart")
        stop.set()
        sent = [sender.result() for sender in senders]
        for client in clients:
            client.close(timeout=30)
        for worker in later:
            worker.result()
        for number in range(3):
            tag = b"c%d" % number
            whole = received[number] + by_tag[tag][1]
            assert whole == [tag + b"-%d" % i for i in range(sent[number])], f"client {number}"
        for client in clients:
            assert client.statistics().resumes >= 1
    finally:
        stop.set()
        for client in clients:
            client.abort()
        restarted.close()


@pytest.mark.timeout(60)
def test_a_client_refused_with_a_retry_hint_waits_for_it(front: Any, tmp_path: Path) -> None:
    """The drain refuses the resume with "come back in 2 s"; the listener is
    back after about 1 s. A client that ignored the hint would resume then;
    this one waits the 2 s (and at most a quarter more)."""
    journal = str(tmp_path / "journal")
    port = free_port()
    resumed_at: list[float] = []
    options = fast_options(resume_window=60.0 * UNIT)

    def on_event(event: rt.ChannelEvent) -> None:
        if event.kind == rt.EventKind.RESUMED:
            resumed_at.append(time.monotonic())

    listener = front.listen(("127.0.0.1", port), journal=journal, **options)
    client = front.connect(("127.0.0.1", port), on_event=on_event, **options)
    restarted = None
    try:
        server = listener.accept(timeout=10)
        client.send(b"before")
        assert server.recv(timeout=10) == b"before"
        server.commit()
        drained_at = time.monotonic()
        listener.drain(10.0 * UNIT, retry_after=2.0)
        restarted = front.listen(("127.0.0.1", port), journal=journal, **options)
        back_at = time.monotonic()
        assert back_at - drained_at < 1.9, "the listener came back too late to tell anything"
        wait_for(lambda: bool(resumed_at), 20, "the resume")
        assert resumed_at[0] - drained_at >= 2.0
        client.send(b"after")
        channel = restarted.accept(timeout=10)
        assert channel.recv(timeout=10) == b"after"
        channel.commit()  # a durable listener acknowledges what its application committed
        client.close(timeout=10)
    finally:
        client.abort()
        listener.close()
        if restarted is not None:
            restarted.close()


@pytest.mark.timeout(60)
def test_a_draining_listener_without_a_journal_refuses_new_sessions_and_waits_for_the_open_ones(front: Any) -> None:
    with front.listen(("127.0.0.1", 0), **fast_options()) as listener:
        client = front.connect(listener.address, **fast_options())
        try:
            server = listener.accept(timeout=10)
            draining = Worker(lambda: listener.drain(30.0 * UNIT, retry_after=3.0), "drain")
            draining.start()
            wait_for(lambda: listener.draining, 10, "the drain to begin")
            with pytest.raises(TimeoutError) as raised:
                front.connect(listener.address, timeout=1.0, **fast_options())
            refusal = raised.value.__cause__
            assert isinstance(refusal, rt.RejectedByPeer) and refusal.reason == RejectReason.SERVER_BUSY
            assert retry_after(refusal.reason, refusal.text) == 3.0
            client.send(b"still here")  # the open session goes on meanwhile
            assert server.recv(timeout=10) == b"still here"
            assert draining.is_alive()
            client.close(timeout=10)
            server.close(timeout=10)
            draining.result(20)  # returns once its last session ended, long before its 30 s
        finally:
            client.abort()


def test_drain_refuses_what_it_cant_do(front: Any) -> None:
    with front.listen(("127.0.0.1", 0), **fast_options()) as listener:
        for bad in ({"timeout": 0}, {"timeout": 1.0, "retry_after": -1.0}, {"timeout": 1.0, "rate": 0.0}):
            with pytest.raises(rt.UsageError):
                listener.drain(**bad)


@pytest.mark.timeout(120)
def test_rtcat_listener_on_sigterm_hands_its_journaled_session_to_the_next_one(tmp_path: Path) -> None:
    data = tmp_path / "in.bin"
    data.write_bytes(os.urandom(3 * 1024 * 1024))
    out = tmp_path / "out.bin"
    port = free_port()
    listen_argv = [*RTCAT, "-l", "-v", "127.0.0.1", str(port), *FAST, "--journal", str(tmp_path / "jl"), "--output", str(out)]
    # The transfer goes through a proxy that slows it to 2 MB/s, so that the
    # SIGTERM lands in the middle of it.
    proxy = FaultProxy(("127.0.0.1", port))
    proxy.set_faults("both", bandwidth=2 * 1024 * 1024)
    send_argv = [*RTCAT, "-v", *FAST, "--journal", str(tmp_path / "js"), "--input", str(data), "127.0.0.1", str(proxy.address[1])]
    processes: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], name: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"{name}.err", "ab") as err:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        processes.append(process)
        return process

    try:
        first = start(listen_argv, "listener")
        sender = start(send_argv, "sender")
        wait_for(lambda: out.exists() and out.stat().st_size > 512 * 1024, 60, "the transfer under way")
        first.send_signal(signal.SIGTERM)
        assert first.wait(30 * UNIT) == 143
        said = (tmp_path / "listener.err").read_text()
        assert "terminated; the session waits in" in said
        assert sender.poll() is None, (tmp_path / "sender.err").read_text()  # it waits for the listener to come back
        assert out.stat().st_size < data.stat().st_size
        second = start(listen_argv, "listener")
        assert sender.wait(90 * UNIT) == 0, (tmp_path / "sender.err").read_text()
        assert second.wait(30 * UNIT) == 0, (tmp_path / "listener.err").read_text()
        assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data.read_bytes()).digest()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        proxy.close()


@pytest.mark.timeout(60)
def test_rtcat_listener_on_sigterm_without_a_journal_aborts_so_the_peer_knows(tmp_path: Path) -> None:
    port = free_port()
    listener_err, sender_err = tmp_path / "listener.err", tmp_path / "sender.err"
    listener_out = tmp_path / "listener.out"
    with open(listener_err, "wb") as err, open(listener_out, "wb") as out:
        listening = subprocess.Popen([*RTCAT, "-l", "127.0.0.1", str(port), *FAST], stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=err)
    with open(sender_err, "wb") as err:
        sending = subprocess.Popen([*RTCAT, *FAST, "127.0.0.1", str(port)], stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, stderr=err)
    try:
        assert sending.stdin is not None
        sending.stdin.write(b"hello\n")
        sending.stdin.flush()
        wait_for(lambda: listener_out.read_bytes() == b"hello\n", 30, "the session carried")
        listening.send_signal(signal.SIGTERM)
        assert listening.wait(30 * UNIT) == 143
        assert "session was aborted" in listener_err.read_text()
        assert sending.wait(30 * UNIT) == 3, sender_err.read_text()  # told at once: the session was aborted
    finally:
        for process in (listening, sending):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_a_listener_with_too_many_handshakes_under_way_says_when_to_come_back(front: Any) -> None:
    """One connection that never sends its HELLO holds the only handshake
    slot; the next one is answered REJECT SERVER_BUSY with the retry hint,
    then an orderly end (it used to be reset without a word)."""
    listener = front.listen(("127.0.0.1", 0), max_pending_handshakes=1, **fast_options(handshake_timeout=10.0))
    with listener, socket.create_connection(listener.address, timeout=10):
        wait_for(lambda: listener.statistics().pending_handshakes == 1, 10, "the slot taken")
        with socket.create_connection(listener.address, timeout=10) as refused:
            received = b""
            while chunk := refused.recv(4096):
                received += chunk
        frames = FrameDecoder(1 << 16).feed(received)
        assert len(frames) == 1 and isinstance(frames[0], Reject), frames
        assert retry_after(frames[0].reason, frames[0].text) == PENDING_RETRY_AFTER
        assert listener.statistics().rejected_handshakes == 1
