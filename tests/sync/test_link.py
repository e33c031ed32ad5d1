"""One connection's threads over socket.socketpair(), with a stand-in owner."""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

import pytest

from helpers import wait_for
from reliable_tcp.core.frames import HEADER_SIZE, ReceiveBuffer
from reliable_tcp.sync._deadline import Deadline
from reliable_tcp.sync._link import Link


class Owner:
    """Records what a link tells its owner; hands the writer queued bytes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)
        self.received = bytearray()
        self.outbox: list[bytes] = []
        self.finish = False
        self.ended: list[tuple[BaseException | None, str, bool]] = []
        self.fail_on_data = False

    def link_received(self, link: Link, data: bytes | memoryview | ReceiveBuffer, now: float) -> bool:
        if self.fail_on_data:
            raise RuntimeError("a bug in the owner")
        with self.lock:
            if isinstance(data, ReceiveBuffer):  # the reader's own buffer: take all of it
                self.received += data.pending()
                data.consumed(len(data), HEADER_SIZE)
            else:
                self.received += data
            self.ready.notify_all()
        return True

    def link_output(self, link: Link) -> bytes | None:
        with self.lock:
            while not self.outbox and not self.finish and not link.closed:
                self.ready.wait()
            if self.outbox:
                return self.outbox.pop(0)
            return None

    def link_ended(self, link: Link, error: BaseException | None, reason: str, crashed: bool) -> None:
        with self.lock:
            self.ended.append((error, reason, crashed))
            self.ready.notify_all()

    def stop(self, link: Link, *, abort: bool = True) -> None:
        """What the channel does to drop a link: close it, wake its writer."""
        link.close(abort=abort)
        with self.lock:
            self.ready.notify_all()

    def send(self, data: bytes) -> None:
        with self.lock:
            self.outbox.append(data)
            self.ready.notify_all()


def started(name: str) -> tuple[Link, Owner, socket.socket]:
    ours, theirs = socket.socketpair()
    owner = Owner()
    link = Link(ours, owner)
    link.start(f"rtcp-test-{name}")
    return link, owner, theirs


def test_bytes_flow_both_ways_and_the_buffer_grows_with_the_stream() -> None:
    link, owner, peer = started("flow")
    owner.send(b"out")
    assert peer.recv(10) == b"out"
    blob = bytes(range(256)) * 4096  # 1 MiB: the reader's buffer doubles from 16 KiB
    peer.sendall(blob)
    wait_for(lambda: len(owner.received) == len(blob), 10, "the whole blob")
    assert bytes(owner.received) == blob
    owner.stop(link)
    assert link.join(Deadline(5))
    peer.close()


def test_the_peers_eof_is_reported_once_without_an_error() -> None:
    link, owner, peer = started("eof")
    peer.shutdown(socket.SHUT_WR)
    wait_for(lambda: bool(owner.ended), 5, "the end")
    assert owner.ended == [(None, "connection closed by peer", False)]
    owner.stop(link, abort=False)
    assert link.join(Deadline(5))
    peer.close()


def test_an_orderly_finish_sends_fin_and_the_socket_closes_by_itself() -> None:
    link, owner, peer = started("finish")
    owner.send(b"last frame")
    with owner.lock:
        owner.finish = True
        owner.ready.notify_all()
    assert peer.recv(100) == b"last frame"
    assert peer.recv(100) == b""  # our FIN, after the last frame (no reset)
    assert link.finished.wait(5)
    peer.close()  # the peer's EOF: both threads are done, the link closes its socket
    assert link.join(Deadline(5))
    wait_for(lambda: link.sock.fileno() == -1, 5, "the socket to be closed")


def test_close_wakes_a_reader_blocked_in_recv() -> None:
    link, owner, peer = started("wake")
    reader = link.threads[0]
    assert reader.is_alive()
    owner.stop(link)  # shutdown() wakes recv(); close() alone would not on Linux
    assert link.join(Deadline(5))
    assert owner.ended == []  # a close we made is not a failure
    peer.close()


def test_a_crash_in_a_link_thread_is_reported_as_one_with_its_cause() -> None:
    link, owner, peer = started("crash")
    owner.fail_on_data = True
    peer.sendall(b"boom")
    wait_for(lambda: bool(owner.ended), 5, "the crash report")
    error, reason, crashed = owner.ended[0]
    assert crashed and isinstance(error, RuntimeError) and "internal failure" in reason
    owner.stop(link)
    assert link.join(Deadline(5))
    peer.close()


@pytest.mark.pure_build
def test_a_crash_ends_the_channel_chained_to_its_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    import reliable_tcp as rt
    from helpers import fast_options
    from reliable_tcp.core.engine import SessionEngine

    with rt.listen(("127.0.0.1", 0), **fast_options()) as listener:
        client = rt.connect(listener.address, **fast_options())
        server = listener.accept(timeout=5)
        client.send(b"unacknowledged")
        real = SessionEngine.receive_data

        def broken(self: SessionEngine, data: object, now: float) -> None:
            if self is server._session.engine:
                raise RuntimeError("a bug in the engine")
            real(self, data, now)  # type: ignore[arg-type]

        monkeypatch.setattr(SessionEngine, "receive_data", broken)
        server.send(b"makes the client answer")  # the client's ack crashes the server's reader
        with pytest.raises(rt.ChannelBroken) as info:
            while True:  # the client's message may have been received before the patch: it comes first
                assert server.recv(timeout=5) == b"unacknowledged"
        assert isinstance(info.value.__cause__, RuntimeError)
        monkeypatch.undo()
        client.abort()
        server.abort()


def test_a_recv_blocked_in_another_thread_is_woken_by_close() -> None:
    import reliable_tcp as rt
    from helpers import Worker, fast_options

    with rt.listen(("127.0.0.1", 0), **fast_options()) as listener:
        client = rt.connect(listener.address, **fast_options())
        server = listener.accept(timeout=5)

        def blocked() -> None:
            with pytest.raises(rt.ChannelClosed):
                client.recv()  # no timeout: only the close can end it

        worker = Worker(blocked, "blocked-recv")
        worker.start()
        wait_for(lambda: worker.is_alive(), 5, "the reader to block")
        client.close()
        worker.result(10)
        server.close()


def test_a_dead_verdict_is_given_at_the_moment_the_link_was_judged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The timer judges the link (probing a paused reader's peer, or bytes
    waiting in the kernel) only once the silence reaches dead_after, so the
    verdict must be given at that same moment: a silence just short of it
    then, and past it at a later reading of the clock, is no verdict (that
    mismatch disconnected a paused consumer's live peer now and then)."""
    import reliable_tcp as rt
    import reliable_tcp.sync._session as session_module
    from helpers import fast_options

    options = fast_options(heartbeat_interval=30.0, dead_after=90.0)  # nothing else fires meanwhile
    with rt.listen(("127.0.0.1", 0), **options) as listener:
        client = rt.connect(listener.address, **options)
        server = listener.accept(timeout=5)
        engine = client._session.engine
        now = time.monotonic()
        moment = now - engine.silence(now) + engine.config.dead_after_seconds - 0.005  # just short of the verdict
        later = SimpleNamespace(monotonic=lambda: moment + 0.010)  # past it, had the clock been read again
        monkeypatch.setattr(session_module, "time", later)
        client._session.fire_timers(moment)
        monkeypatch.undo()
        assert client.statistics().disconnects == 0
        client.send(b"still connected")
        assert server.recv(timeout=5) == b"still connected"
        client.close(timeout=5)
        server.close(timeout=5)


def test_a_session_keeps_no_connection_it_is_done_with() -> None:
    """Issue 25, item 6: every reconnect kept the old connection (its
    socket, its two threads' objects, its TLS state) until the session
    ended, about 12 KB a reconnect. Only links whose threads still run are
    kept, so many reconnects hold no more than a couple of links."""
    import gc

    import reliable_tcp as rt
    from helpers import fast_options, wait_for
    from reliable_tcp.sync._link import Link
    from reliable_tcp.testing import FaultProxy

    reconnects = 60
    with rt.listen(("127.0.0.1", 0), **fast_options()) as listener, FaultProxy(listener.address) as proxy:
        client = rt.connect(proxy.address, **fast_options())
        server = listener.accept(timeout=5)
        try:
            for i in range(reconnects):
                resumes = client.statistics().resumes
                proxy.reset()
                wait_for(lambda: client.statistics().resumes > resumes, 10, "the resume")  # noqa: B023
                client.send(b"%d" % i)
                assert server.recv(timeout=5) == b"%d" % i
            for channel in (client, server):
                assert len(channel._session._links) <= 3
            gc.collect()
            links = [obj for obj in gc.get_objects() if isinstance(obj, Link)]
            assert len(links) <= 6, f"{len(links)} links alive after {reconnects} reconnects"
            client.close()
            server.close()
        finally:
            client.abort()
            server.abort()
