"""Durable sessions where real disks and operators are involved: full disks,
short writes, the lock, sessions that ended, permissions, managing journals."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import reliable_tcp as rt
from fronts import AsyncioFront
from helpers import Worker, fast_options, free_port, wait_for
from reliable_tcp.durable.session_journal import Durable
from reliable_tcp.durable.journal import Journal, Outcome
from reliable_tcp.testing import FaultProxy

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = fast_options(heartbeat_interval=0.2, resume_window=60.0)


@pytest.fixture
def listener() -> Iterator[rt.Listener]:
    with rt.listen(("127.0.0.1", 0), **OPTIONS) as lst:
        yield lst


def drain(channel: rt.Channel, count: int) -> list[bytes]:
    return [channel.recv(timeout=10) for _ in range(count)]


# ------------------------------------------------------------ full disks


class ShortWrites:
    """A journal file that writes at most ``limit`` bytes in all, then fails
    like a full disk (a short write first, then ENOSPC)."""

    def __init__(self, real: object, limit: int) -> None:
        self.real = real
        self.room = limit

    def write(self, data: memoryview) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        part = bytes(data[: self.room])
        self.room -= len(part)
        return self.real.write(part)  # type: ignore[attr-defined, no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


def test_a_short_write_is_rolled_back_and_the_message_neither_queued_nor_sent(tmp_path: Path, listener: rt.Listener) -> None:
    journal = str(tmp_path / "j")
    client = rt.connect(listener.address, journal=journal, **OPTIONS)
    server = listener.accept(timeout=5)
    client.send(b"before")
    store = client._session.durable.journal  # type: ignore[union-attr]  # the injection needs the file
    size = store.size()
    store._file = ShortWrites(store._file, 10)  # the next record gets 10 bytes, then the disk is full
    with pytest.raises(rt.JournalWriteFailed) as info:
        client.send(b"x" * 100)
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert not info.value.queued
    assert store.size() == size and os.path.getsize(os.path.join(journal, "log")) == size  # rolled back
    assert client.statistics().messages_sent == 1  # nothing queued
    store._file = store._file.real  # space again: the session goes on
    client.send(b"after")
    assert drain(server, 2) == [b"before", b"after"]
    client.close()
    server.close()


def test_failed_ack_and_commit_records_are_logged_and_retried_never_fatal(
    tmp_path: Path, listener: rt.Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = rt.connect(listener.address, journal=str(tmp_path / "j"), **OPTIONS)
    server = listener.accept(timeout=5)
    store = client._session.durable.journal  # type: ignore[union-attr]
    real_acked, real_consumed = store.record_acked, store.record_consumed
    failing = {"on": True}

    def acked(upto: int) -> int:
        if failing["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_acked(upto)  # type: ignore[no-any-return]

    def consumed(upto: int) -> int:
        if failing["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_consumed(upto)  # type: ignore[no-any-return]

    monkeypatch.setattr(store, "record_acked", acked)
    monkeypatch.setattr(store, "record_consumed", consumed)
    client.send(b"acked while the disk is full")
    client.flush(timeout=5)  # the ack record failed: logged, the session is healthy
    server.send(b"one")
    server.send(b"two")
    assert client.recv(timeout=5) == b"one"
    assert client.recv(timeout=5) == b"two"  # its commit of "one" failed: not fatal
    assert client.last_committed_seq == 0  # so the peer still keeps them
    failing["on"] = False
    client.commit()  # retried: now it holds
    assert client.last_committed_seq == 2
    assert client.state is rt.ChannelState.CONNECTED
    client.close()
    server.close()


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB tmpfs (needs root; skips cleanly otherwise)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, timeout=30)
    if result.returncode != 0:
        pytest.skip(f"can't mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def test_a_full_disk_refuses_whole_messages_and_the_session_recovers(tiny_filesystem: Path, listener: rt.Listener) -> None:
    filler = tiny_filesystem / "filler"
    filler.write_bytes(bytes(64 * 1024))  # removed later: the space that comes back
    journal = str(tiny_filesystem / "j")
    client = rt.connect(listener.address, journal=journal, **fast_options(heartbeat_interval=0.2, window_bytes=1 << 20))
    server = listener.accept(timeout=5)
    payload = os.urandom(20_000)
    returned = 0
    with pytest.raises(rt.JournalWriteFailed) as info:
        while True:  # fill the 256 KiB disk
            client.send(b"%06d" % returned + payload)
            returned += 1
    assert isinstance(info.value.__cause__, OSError) and not info.value.queued
    assert returned >= 5
    assert client.statistics().messages_sent == returned  # the refused one was never queued
    got = drain(server, returned)
    assert [int(m[:6]) for m in got] == list(range(returned))  # and never sent
    # Whatever send() returned for is in the journal, whole.
    store = client._session.durable.journal  # type: ignore[union-attr]
    store.sync()
    from reliable_tcp.durable.journal import read_state

    state, good, size = read_state(os.path.join(journal, "log"))
    assert good == size and state.next_seq == returned + 1
    # Space comes back: sends work again, on the same session.
    filler.unlink()
    client.send(b"after")
    assert server.recv(timeout=5) == b"after"
    client.close()
    server.close()


# --------------------------------------------------------------- the lock


def test_the_lock_is_held_until_the_files_are_gone(tmp_path: Path) -> None:
    """Two processes open, write and close-with-delete the same journal over
    and over; each checks, while it holds the lock, that the path still
    names the files it holds. Closing used to release the lock first and
    delete after, so the other could write "durable" records into a deleted file."""
    script = (
        "import os, sys, time\n"
        "from reliable_tcp.durable.journal import Journal\n"
        "from reliable_tcp.exceptions import JournalLocked\n"
        "d, until = sys.argv[1], time.monotonic() + float(sys.argv[2])\n"
        "held = bad = 0\n"
        "while time.monotonic() < until:\n"
        "    try:\n"
        "        j = Journal(d, fsync=False)\n"
        "    except (JournalLocked, FileNotFoundError):\n"
        "        continue\n"
        "    held += 1\n"
        "    j.record_sent(j.state.next_seq, [b'x'])\n"
        "    log, lock = os.path.join(d, 'log'), os.path.join(d, 'lock')\n"
        "    try:\n"
        "        if os.stat(log).st_ino != os.fstat(j._file.fileno()).st_ino: bad += 1\n"
        "        if os.stat(lock).st_ino != os.fstat(j._lock_fd).st_ino: bad += 1\n"
        "    except FileNotFoundError:\n"
        "        bad += 1\n"
        "    j.close(discard=True)\n"
        "print(held, bad)\n"
    )
    directory = str(tmp_path / "shared")
    procs = [
        subprocess.Popen([sys.executable, "-c", script, directory, "3"], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
        for _ in range(3)
    ]
    results = [tuple(map(int, proc.communicate(timeout=60)[0].split())) for proc in procs]
    assert all(held > 0 for held, _ in results), results
    assert sum(bad for _, bad in results) == 0, results


# ----------------------------------------------------- sessions that ended


_LOSING_LISTENER = (
    "import sys, time, reliable_tcp as rt\n"
    "from reliable_tcp.testing import FaultProxy\n"
    "options = dict(heartbeat_interval=0.2, resume_window=1.0, handshake_timeout=1.0)\n"
    "lst = rt.listen(('127.0.0.1', 0), journal=sys.argv[1], **options)\n"
    "proxy = FaultProxy(lst.address)\n"
    "client = rt.connect(proxy.address, **options)\n"
    "server = lst.accept(timeout=5)\n"
    "proxy.blackhole()\n"
    "for i in range(3):\n"
    "    server.send(b'%d' % i)\n"
    "while server.state is not rt.ChannelState.FAILED:\n"
    "    time.sleep(0.05)\n"
    "print('lost', flush=True)\n"
    "time.sleep(60)\n"
)


def test_a_lost_listener_session_is_reported_once_then_retired(tmp_path: Path) -> None:
    journal = str(tmp_path / "sessions")
    options = fast_options(heartbeat_interval=0.2, resume_window=1.0)
    first = subprocess.Popen([sys.executable, "-c", _LOSING_LISTENER, journal], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "lost"
    finally:
        first.kill()  # the process dies before its owner called close()
        first.wait(10)
    # The restart reports it once: an ended session, offered with what was never acknowledged.
    with rt.listen(("127.0.0.1", 0), journal=journal, **options) as second:
        restored = second.accept(timeout=5)
        assert restored.restored and second.session_count == 0  # not resumable, not counted
        with pytest.raises(rt.SessionLost) as info:
            restored.recv(timeout=1)
        assert [payload for _, payload in info.value.unacked] == [b"0", b"1", b"2"]
        assert "before the restart" in str(info.value)
        with pytest.raises(rt.SessionLost):
            restored.close()  # the owner has now been told: the journal is retired
    with rt.listen(("127.0.0.1", 0), journal=journal, **options) as third, pytest.raises(TimeoutError):
        third.accept(timeout=0.5)  # never again
    assert [info.status for info in rt.list_journals(journal)] == ["retired"]


def test_a_finished_session_is_never_offered_again(tmp_path: Path, listener: rt.Listener) -> None:
    journal = str(tmp_path / "sessions")
    port = free_port()
    argv = [sys.executable, str(ROOT / "tests" / "support" / "durable_server.py"), "--port", str(port),
            "--journal", journal, "--out", str(tmp_path / "out")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([*argv, "--hang-at-end"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        client = rt.connect(("127.0.0.1", port), **OPTIONS)
        for i in range(5):
            client.send(b"%d" % i)
        client.close()  # a complete close
        lines = [server.stdout.readline().strip() for _ in range(7)]
        assert lines[-1] == "peer closed", lines
    finally:
        server.kill()  # after recv() raised ChannelClosed, before its own close()
        server.wait(10)
    restarted = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert restarted.stdout is not None and restarted.stdout.readline().strip() == "listening"
        wait_for(lambda: not any(i.status != "retired" for i in rt.list_journals(journal)), 5, "the journal to go")
        assert rt.list_journals(journal) == []  # a closed session's journal is deleted, not offered
    finally:
        restarted.kill()
        restarted.wait(10)


def test_the_end_is_reported_only_once_the_journal_holds_it(tmp_path: Path, front: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # The race behind the test above: recv() raised ChannelClosed while the
    # END record was still on its way to the disk, so a process killed at
    # that moment was offered the finished session again after a restart.
    release = threading.Event()
    recorded: list[str] = []
    record_end = Durable.record_end

    def held_record_end(durable: Durable, kind: str, reason: str) -> None:
        release.wait(10)
        record_end(durable, kind, reason)
        recorded.append(kind)

    monkeypatch.setattr(Durable, "record_end", held_record_end)
    events: list[str] = []
    with front.listen(("127.0.0.1", 0), journal=str(tmp_path / "sessions"), on_event=lambda e: events.append(e.kind),
                      **OPTIONS) as lst:
        client = rt.connect(lst.address, **OPTIONS)
        try:
            client.send(b"only")
            server = lst.accept(timeout=10)
            assert server.recv(timeout=10) == b"only"
            server.commit()  # acknowledged, so the client's close is complete
            client.close(timeout=10)
            with pytest.raises(TimeoutError):
                server.recv(timeout=0.5)  # the end is known, but not yet durable
            assert recorded == [] and "closed" not in events, events  # nor is it announced
            release.set()
            with pytest.raises(rt.ChannelClosed):
                server.recv(timeout=10)
            assert recorded == ["closed"]
            wait_for(lambda: "closed" in events, 10, "the closed event once the END record is on disk")
            server.close()
        finally:
            release.set()
            client.abort()


def test_a_sender_whose_server_forgot_the_session_is_told_once(tmp_path: Path) -> None:
    journal = str(tmp_path / "journal")
    with rt.listen(("127.0.0.1", 0), **OPTIONS) as lst, FaultProxy(lst.address) as proxy:
        argv = [sys.executable, str(ROOT / "tests" / "support" / "durable_peer.py"), "send",
                "--address", f"{proxy.address[0]}:{proxy.address[1]}", "--journal", journal, "--count", "100000"]
        sender = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            server = lst.accept(timeout=10)
            got = drain(server, 50)
            proxy.blackhole()
        finally:
            sender.kill()  # kill -9: the journal stays as it was
            sender.wait(10)
        while True:  # whatever had arrived before the cut
            try:
                got.append(server.recv(timeout=0.5))
            except TimeoutError:
                break
        server.abort()  # and the server forgets the session
        proxy.heal()
        with pytest.raises(rt.SessionLost) as info:
            rt.connect(proxy.address, journal=journal, timeout=10, **OPTIONS)
        unacked = [int(payload) for _, payload in info.value.unacked]
        assert unacked and unacked == list(range(unacked[0], unacked[0] + len(unacked)))
        # Everything before the first unacknowledged one was delivered (some after it may have been too).
        assert [int(m) for m in got] == list(range(len(got))) and unacked[0] <= len(got)
        # Told once: the next start is a new session, not the same error again.
        fresh = rt.connect(proxy.address, journal=journal, timeout=10, **OPTIONS)
        assert fresh.last_sent_seq == 0
        fresh.abort()
        wait_for(lambda: lst.session_count == 0, 5, "the aborted new session to be forgotten")


# ------------------------------------------------------------ permissions


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_journals_are_private_whatever_the_umask(tmp_path: Path, umask: int, listener: rt.Listener) -> None:
    old = os.umask(umask)
    try:
        journal = tmp_path / "nested" / "journal"
        client = rt.connect(listener.address, journal=str(journal), **OPTIONS)
        server = listener.accept(timeout=5)
        client.send(b"secret payload")
        for path in (journal, journal.parent):
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
        for name in ("log", "lock"):
            assert stat.S_IMODE((journal / name).stat().st_mode) == 0o600, name
        client.abort()
        server.abort()
    finally:
        os.umask(old)


def test_an_existing_directory_open_to_others_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wide = tmp_path / "wide"
    wide.mkdir()
    os.chmod(wide, 0o755)
    Journal(str(wide)).close()
    assert any("readable by others" in record.getMessage() for record in caplog.records)
    assert stat.S_IMODE((wide / "log").stat().st_mode) == 0o600


# --------------------------------------------------------------- managing


def test_journals_can_be_listed_and_removed_and_not_while_in_use(tmp_path: Path, listener: rt.Listener) -> None:
    journal = str(tmp_path / "journal")
    client = rt.connect(listener.address, journal=journal, **OPTIONS)
    server = listener.accept(timeout=5)
    client.send(b"one")
    (info,) = rt.list_journals(journal)
    assert info.status == "in use" and info.session_id == client.session_id
    with pytest.raises(rt.JournalLocked):
        rt.remove_journal(journal, client.session_id[:6])
    rtcat = [sys.executable, str(ROOT / "tools" / "rtcat"), "journal"]
    busy = subprocess.run([*rtcat, "rm", journal, "--all"], capture_output=True, text=True, timeout=30)
    assert busy.returncode == 1 and "in use" in busy.stderr
    client.abort()
    server.abort()
    listed = subprocess.run([*rtcat, "ls", journal], capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0 and "retired" in listed.stdout, listed
    ended = Journal(journal)  # an ended, unreported journal too
    ended.record_end(Outcome.LOST, "test")
    ended.close()
    removed = subprocess.run([*rtcat, "rm", journal, "--all"], capture_output=True, text=True, timeout=30)
    assert removed.returncode == 0, removed.stderr
    assert not os.path.exists(journal) or rt.list_journals(journal) == []


# ------------------------------------------------------------ damaged journals


def test_a_damaged_record_in_a_client_journal_is_reported_not_cut(tmp_path: Path, front: Any) -> None:
    """msg-000 acknowledged, msg-001..020 sent while the path is blackholed
    (each send() returned: each is durable), then the process dies; one bit of
    msg-005 flips on the disk. A restart must not resume with msg-001..004 and
    forget the other fifteen: opening the journal raises JournalDamaged naming
    the file and the offset, the file stays as it is, and the listing says
    damaged."""
    journal = tmp_path / "client"
    with rt.listen(("127.0.0.1", 0), **OPTIONS) as lst, FaultProxy(lst.address) as proxy:
        client = front.connect(proxy.address, journal=str(journal), **OPTIONS)
        try:
            client.send(b"msg-000")
            client.flush(timeout=10)
            proxy.blackhole()
            for n in range(1, 21):
                client.send(b"msg-%03d" % n)
            # What kill -9 would leave on the disk now: the journal as it stands.
            crashed = tmp_path / "after-the-crash"
            crashed.mkdir(mode=0o700)
            shutil.copytree(journal, crashed / "session")
        finally:
            client.abort()
    log = crashed / "session" / "log"
    data = bytearray(log.read_bytes())
    flipped_at = data.index(b"msg-005") + 6
    data[flipped_at] ^= 0x01  # msg-005 becomes msg-004 on the disk
    log.write_bytes(bytes(data))

    with pytest.raises(rt.JournalDamaged) as raised:
        front.connect(proxy.address, journal=str(crashed / "session"), timeout=5, **OPTIONS)
    assert raised.value.path == str(log) and str(log) in str(raised.value)
    assert data.index(b"msg-004") < raised.value.offset < flipped_at  # the record that holds msg-005
    assert log.read_bytes() == bytes(data)
    (info,) = rt.list_journals(str(crashed))
    assert info.status == "damaged" and f"at byte {raised.value.offset}" in info.damage
    listed = subprocess.run([sys.executable, str(ROOT / "tools" / "rtcat"), "journal", "ls", str(crashed)],
                            capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0 and "damaged" in listed.stdout, listed


def test_a_listen_that_finds_a_damaged_journal_raises_and_keeps_nothing(tmp_path: Path, front: Any) -> None:
    sessions = tmp_path / "sessions"
    sessions.mkdir(mode=0o700)
    for name in ("a-good", "b-damaged", "c-good"):
        journal = Journal(str(sessions / name))
        journal.record_session(name.encode().ljust(16, b"."), b"s" * 16)
        journal.record_sent(1, [b"one", b"two"])
        journal.record_sent(3, [b"three"])
        journal.close()
    log = sessions / "b-damaged" / "log"
    data = bytearray(log.read_bytes())
    data[data.index(b"two")] ^= 0x20
    log.write_bytes(bytes(data))
    port = free_port()
    with pytest.raises(rt.JournalDamaged, match="b-damaged"):
        front.listen(("127.0.0.1", port), journal=str(sessions), **OPTIONS)
    # Nothing it took is still held: every journal opens, the port binds again.
    for name in ("a-good", "b-damaged", "c-good"):
        assert rt.list_journals(str(sessions / name))[0].status != "in use"
    Journal(str(sessions / "a-good")).close()
    Journal(str(sessions / "c-good")).close()
    with front.listen(("127.0.0.1", port), **OPTIONS):
        pass
    assert log.read_bytes() == bytes(data)


# ------------------------------------------------------------ closing after recv


def test_what_recv_returned_before_a_clean_close_is_acknowledged_by_it(tmp_path: Path, front: Any) -> None:
    """A durable server takes an order with recv(), handles it, and closes. The
    close handshake must acknowledge the order: a client told it was
    unacknowledged would send it again (the guide's recipe), and the server,
    its journal deleted by the complete close, would handle it twice."""
    sessions = tmp_path / "sessions"
    with front.listen(("127.0.0.1", 0), journal=str(sessions), **OPTIONS) as lst:
        client = rt.connect(lst.address, **OPTIONS)
        try:
            client.send(b"order-1")
            server = lst.accept(timeout=10)
            assert server.recv(timeout=10) == b"order-1"
            closing = Worker(lambda: server.close(timeout=10), "server-close")
            closing.start()
            client.close(timeout=10)  # raised SessionLost listing order-1 before the change
            closing.result(30)
            assert client.statistics().unacked_messages == 0
        finally:
            client.abort()
    assert not any(sessions.iterdir())  # closed: nothing left to deliver again


def test_an_exception_in_the_with_block_leaves_the_message_unacknowledged(tmp_path: Path, front: Any) -> None:
    """The other side of that rule: leaving ``with channel:`` by an exception
    is not "done with it", so the message being handled is not acknowledged
    and its sender is told."""
    with front.listen(("127.0.0.1", 0), journal=str(tmp_path / "sessions"), **OPTIONS) as lst:
        client = rt.connect(lst.address, **OPTIONS)
        try:
            client.send(b"order-1")
            server = lst.accept(timeout=10)

            def handle() -> None:
                with server:
                    assert server.recv(timeout=10) == b"order-1"
                    raise RuntimeError("the handler failed")

            handling = Worker(handle, "server-handle")
            handling.start()
            with pytest.raises(rt.SessionLost) as lost:
                client.close(timeout=10)
            assert [payload for _, payload in lost.value.unacked] == [b"order-1"]
            with pytest.raises(RuntimeError, match="the handler failed"):
                handling.result(30)
        finally:
            client.abort()


# ------------------------------------------------------------ files that are not ours


def test_a_listener_touches_only_the_journals_it_wrote(tmp_path: Path, front: Any, caplog: pytest.LogCaptureFixture) -> None:
    """An empty lost+found (the root of a dedicated file system), an operator's
    notes/log and a README in the journal directory: listen(), its sessions,
    its close, the listing and `rtcat journal rm --all` never read, change or
    delete them, and the listener says it left them alone."""
    sessions = tmp_path / "sessions"
    sessions.mkdir(mode=0o700)
    (sessions / "lost+found").mkdir()
    (sessions / "notes").mkdir()
    (sessions / "notes" / "log").write_text("2026-12-06 moved the server to rack 4\n")
    (sessions / "README").write_text("journals of the order service\n")
    foreign = {path: path.read_bytes() if path.is_file() else None for path in sessions.rglob("*")}
    caplog.set_level("WARNING")
    with front.listen(("127.0.0.1", 0), journal=str(sessions), **OPTIONS) as lst:
        client = rt.connect(lst.address, **OPTIONS)
        try:
            client.send(b"one")
            server = lst.accept(timeout=10)
            assert server.recv(timeout=10) == b"one"
            assert [info.status for info in rt.list_journals(str(sessions))] == ["in use"]
            server.close(timeout=10)
            client.close(timeout=10)
        finally:
            client.abort()
    assert sum("not a session journal; left alone" in r.getMessage() for r in caplog.records) == 3
    rtcat = [sys.executable, str(ROOT / "tools" / "rtcat"), "journal"]
    assert subprocess.run([*rtcat, "rm", str(sessions), "--all"], capture_output=True, timeout=30).returncode == 0
    with front.listen(("127.0.0.1", 0), journal=str(sessions), **OPTIONS):
        pass  # a restart reads the directory again
    assert {path: path.read_bytes() if path.is_file() else None for path in sessions.rglob("*")} == foreign


def test_a_listen_that_can_not_bind_holds_no_journal(tmp_path: Path, front: Any) -> None:
    sessions = tmp_path / "sessions"
    sessions.mkdir(mode=0o700)
    journal = Journal(str(sessions / "0123456789abcdef0123456789abcdef"))
    journal.record_session(b"i" * 16, b"s" * 16)
    journal.record_sent(1, [b"one"])
    journal.close()
    with socket.create_server(("127.0.0.1", 0)) as taken, pytest.raises(OSError):
        front.listen(taken.getsockname()[:2], journal=str(sessions), **OPTIONS)
    (info,) = rt.list_journals(str(sessions))
    assert info.status == "resumable" and info.unacked_messages == 1  # not locked, not changed


# ------------------------------------------------------------ several consumers


def test_a_second_consumer_thread_is_refused_while_the_first_holds_a_message(tmp_path: Path) -> None:
    """Two worker threads on a durable channel: A takes m0 and is still
    handling it when B calls recv(). B's recv used to commit m0 along with
    everything else handed out, so a crash lost m0. Now B is refused with
    UsageError and m0 stays uncommitted until A commits it; a thread that
    ended hands the channel over."""
    with rt.listen(("127.0.0.1", 0), journal=str(tmp_path / "sessions"), **OPTIONS) as lst:
        client = rt.connect(lst.address, **OPTIONS)
        try:
            for n in range(4):
                client.send(b"m%d" % n)
            server = lst.accept(timeout=10)
            took, handled = threading.Event(), threading.Event()

            def consumer_a() -> bytes:
                message = server.recv(timeout=10)
                took.set()
                assert handled.wait(10)  # still handling it until the test says so
                server.commit()
                return message

            a = Worker(consumer_a, "consumer-a")
            a.start()
            assert took.wait(10)
            with pytest.raises(rt.UsageError, match="consumer-a"):
                server.recv(timeout=5)
            with pytest.raises(rt.UsageError, match="consumer-a"):
                server.commit()
            assert server.last_committed_seq == 0  # m0 is still A's: a crash now delivers it again
            handled.set()
            assert a.result(10) == b"m0" and server.last_committed_seq == 1
            b = Worker(lambda: server.recv(timeout=10), "consumer-b")
            b.start()
            assert b.result(10) == b"m1"  # B took m1 and ended without committing it
            assert server.recv(timeout=10) == b"m2"  # an ended thread hands over: this commits m1
            assert server.last_committed_seq == 2
            assert server.recv(timeout=10) == b"m3"
            server.close(timeout=10)
            client.close(timeout=10)
        finally:
            client.abort()


def test_a_second_consumer_task_is_refused_while_the_first_holds_a_message(tmp_path: Path) -> None:
    """The same rule on the asyncio front, with tasks."""
    front = AsyncioFront()
    try:
        with front.listen(("127.0.0.1", 0), journal=str(tmp_path / "sessions"), **OPTIONS) as lst:
            client = rt.connect(lst.address, **OPTIONS)
            try:
                for n in range(3):
                    client.send(b"m%d" % n)
                channel = lst.accept(timeout=10).channel

                async def scenario() -> None:
                    took, handled = asyncio.Event(), asyncio.Event()

                    async def consumer_a() -> bytes:
                        message = await channel.recv()
                        took.set()
                        await handled.wait()
                        await channel.commit()
                        return message

                    a = asyncio.create_task(consumer_a(), name="consumer-a")
                    await took.wait()
                    with pytest.raises(rt.UsageError, match="consumer-a"):
                        await channel.recv()
                    with pytest.raises(rt.UsageError, match="consumer-a"):
                        await channel.commit()
                    assert channel.last_committed_seq == 0
                    handled.set()
                    assert await a == b"m0" and channel.last_committed_seq == 1
                    assert await channel.recv() == b"m1"
                    assert await channel.recv() == b"m2"
                    await channel.close(timeout=10)

                front.run(scenario(), timeout=30)
                client.close(timeout=10)
            finally:
                client.abort()
    finally:
        front.close()
