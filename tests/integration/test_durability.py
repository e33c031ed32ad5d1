"""Durable sessions on the connecting side: kill -9 the sender or the
receiver at random points, restart it with the same journal, and check that
nothing acknowledged is lost and nothing committed is delivered twice."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import reliable_tcp as rt
from helpers import Worker, fast_options, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
PEER = [sys.executable, str(ROOT / "tests" / "support" / "durable_peer.py")]
OPTIONS = fast_options(heartbeat_interval=0.2, resume_window=60.0)

#: The killed process runs each front end in turn; the survivor is threaded.
peer_fronts = pytest.mark.parametrize("peer_front", ["threads", "asyncio"])


class Peer:
    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.last = -1
        #: What the restarted peer's channel says of itself: last sent, last committed, acknowledged.
        self.started: tuple[int, int, int] | None = None
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            words = raw.split()
            if len(words) == 4 and words[0] == b"started":
                with self.changed:
                    self.started = (int(words[1]), int(words[2]), int(words[3]))
                    self.changed.notify_all()
            if len(words) == 2 and words[0] in (b"sent", b"got"):
                with self.changed:
                    self.last = int(words[1])
                    self.changed.notify_all()

    def wait_progress(self, at_least: int, timeout: float = 30) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.last >= at_least or self.proc.poll() is not None, timeout)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.reader.join(5)

    def finish(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(self.proc.stderr.read().decode() if self.proc.stderr else "") from None


@peer_fronts
@pytest.mark.timeout(240)
def test_sender_killed_and_restarted_loses_and_repeats_nothing(tmp_path: Path, peer_front: str) -> None:
    count, kills = 3000, 5
    rng = random.Random(7)
    journal = str(tmp_path / "journal")
    with rt.listen(("127.0.0.1", 0), **OPTIONS) as listener:
        address = f"127.0.0.1:{listener.address[1]}"
        delivered: list[int] = []
        holder: list[rt.Channel] = []

        def receive() -> None:
            channel = listener.accept(timeout=30)
            holder.append(channel)
            try:
                for message in channel:
                    delivered.append(int(message))
            except rt.ChannelClosed:
                return

        receiver = Worker(receive, "durable-receiver")
        receiver.start()
        argv = [*PEER, "send", "--address", address, "--journal", journal, "--count", str(count), "--front", peer_front]
        target = 0
        receipts: list[int] = []
        for _ in range(kills):
            peer = Peer(argv)
            target = min(count - 1, max(target, peer.last) + rng.randint(100, 500))
            peer.wait_progress(target)
            assert peer.started is not None
            receipts.append(peer.started[2])
            # A restored receipt never claims more than the receiver got (issue 28).
            assert peer.started[2] <= len(delivered) and peer.started[2] <= peer.started[0]
            peer.kill()  # SIGKILL: no goodbye, the journal is all that is left
        last = Peer(argv)
        assert last.finish() == 0
        receiver.result(60)
        assert delivered == list(range(count))  # none lost, none twice, in order
        assert receipts[0] == 0 and max(receipts) > 0  # receipts continue across restarts
        assert not os.path.exists(os.path.join(journal, "log"))  # a clean close removes the journal
        holder[0].close()


@peer_fronts
@pytest.mark.timeout(240)
def test_receiver_killed_and_restarted_redelivers_only_what_it_had_not_committed(tmp_path: Path, peer_front: str) -> None:
    count, kills = 3000, 5
    rng = random.Random(11)
    journal = str(tmp_path / "journal")
    out = tmp_path / "received"
    with rt.listen(("127.0.0.1", 0), **OPTIONS) as listener:
        address = f"127.0.0.1:{listener.address[1]}"
        holder: list[rt.Channel] = []

        def send() -> None:
            channel = listener.accept(timeout=30)
            holder.append(channel)
            for start in range(0, count, 100):
                channel.send_many([b"%d" % n for n in range(start, min(count, start + 100))])
            channel.flush(timeout=120)

        sender = Worker(send, "durable-sender")
        sender.start()
        argv = [*PEER, "recv", "--address", address, "--journal", journal, "--count", str(count), "--out", str(out),
                "--front", peer_front]
        progress = 0
        for _ in range(kills):
            peer = Peer(argv)
            progress = min(count - 2, progress + rng.randint(200, 500))
            peer.wait_progress(progress)
            peer.kill()
        last = Peer(argv)
        wait_for(lambda: out.exists() and out.read_bytes().count(b"\n") >= count, 60, "every message")
        sender.result(60)
        holder[0].close(timeout=10)
        assert last.finish() == 0
    lines = [int(line) for line in out.read_bytes().split()]
    assert set(lines) == set(range(count))  # nothing lost
    duplicates = len(lines) - count
    # Only a message written but not yet committed when the process died comes again.
    assert duplicates <= kills
    # Within what each run wrote, order holds: a repeat only ever goes back one step.
    assert all(b >= a or a - b <= 1 for a, b in zip(lines, lines[1:], strict=False))


@peer_fronts
@pytest.mark.timeout(240)
def test_listener_killed_and_restarted_brings_its_sessions_back(tmp_path: Path, peer_front: str) -> None:
    count, kills = 2000, 3
    rng = random.Random(5)
    journal = str(tmp_path / "sessions")
    out = tmp_path / "received"
    port = free_port()
    server_argv = [sys.executable, str(ROOT / "tests" / "support" / "durable_server.py"), "--port", str(port),
                   "--journal", journal, "--out", str(out), "--front", peer_front]
    server = Peer(server_argv)
    client = rt.connect(("127.0.0.1", port), timeout=30, **OPTIONS)
    sending = Worker(lambda: [client.send(b"%d" % n, timeout=120) for n in range(count)], "durable-client")
    sending.start()
    progress = 0
    for _ in range(kills):
        progress = min(count - 2, progress + rng.randint(200, 400))
        server.wait_progress(progress)
        server.kill()  # the server process dies; its sessions live in the journal
        server = Peer(server_argv)
    sending.result(120)
    client.close(timeout=60)  # every message acknowledged, hence committed by the server
    assert server.finish() == 0
    lines = [int(line) for line in out.read_bytes().split()]
    assert set(lines) == set(range(count))
    assert len(lines) - count <= kills  # only an uncommitted message at each kill comes again
    assert client.statistics().resumes >= kills
    assert not any(Path(journal).iterdir())  # closed cleanly: no session journal left


@pytest.mark.timeout(240)
def test_rtcat_file_transfer_survives_killing_both_sides(tmp_path: Path) -> None:
    import hashlib

    from reliable_tcp.testing import FaultProxy

    data = tmp_path / "in.bin"
    data.write_bytes(os.urandom(3 * 1024 * 1024))
    out = tmp_path / "out.bin"
    port = free_port()
    rtcat = [sys.executable, str(ROOT / "tools" / "rtcat"), "--heartbeat", "0.2", "--resume-window", "60"]
    listener_argv = [*rtcat, "-l", "127.0.0.1", str(port), "--journal", str(tmp_path / "jl"), "--output", str(out)]

    def start(argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    with FaultProxy(("127.0.0.1", port)) as proxy:
        proxy.set_faults("both", bandwidth=1_000_000)  # about 3 s for the file: room to kill mid-way
        sender_argv = [*rtcat, "--journal", str(tmp_path / "js"), "--input", str(data), "127.0.0.1", str(proxy.address[1])]
        listener = start(listener_argv)
        sender = start(sender_argv)
        try:
            wait_for(lambda: proxy.bytes_forwarded["up"] > 800_000, 60, "a first third")
            sender.send_signal(signal.SIGKILL)
            sender.wait(10)
            sender = start(sender_argv)
            wait_for(lambda: proxy.bytes_forwarded["up"] > 1_800_000, 60, "two thirds")
            listener.send_signal(signal.SIGKILL)
            listener.wait(10)
            listener = start(listener_argv)
            assert sender.wait(120) == 0, sender.stderr.read().decode() if sender.stderr else ""
            assert listener.wait(60) == 0, listener.stderr.read().decode() if listener.stderr else ""
        finally:
            for proc in (sender, listener):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(data.read_bytes()).hexdigest()
