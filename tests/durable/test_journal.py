"""The journal's storage layer: replay, torn tails, corruption, the lock, group commit, compaction."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reliable_tcp.exceptions import JournalDamaged, JournalLocked
from reliable_tcp.durable.journal import Journal, JournalState

ROOT = Path(__file__).resolve().parents[2]


def snapshot(state: JournalState) -> tuple[object, ...]:
    return (state.session_id, state.secret, state.next_seq, state.acked, state.consumed, dict(state.unacked))


def sample(directory: Path) -> list[tuple[object, ...]]:
    """Write a few records; return the state after each (for the torn-tail test)."""
    journal = Journal(str(directory))
    states = [snapshot(journal.state)]
    journal.record_session(b"i" * 16, b"s" * 16)
    states.append(snapshot(journal.state))
    journal.record_sent(1, [b"one", b"two", b"three"])
    states.append(snapshot(journal.state))
    journal.record_acked(1)
    states.append(snapshot(journal.state))
    journal.record_consumed(5)
    states.append(snapshot(journal.state))
    journal.record_sent(4, [b"four" * 10])
    states.append(snapshot(journal.state))
    journal.close()
    return states


def test_replay_gives_back_the_state(tmp_path: Path) -> None:
    states = sample(tmp_path / "j")
    journal = Journal(str(tmp_path / "j"))
    assert snapshot(journal.state) == states[-1]
    assert journal.state.unacked == {2: b"two", 3: b"three", 4: b"four" * 10}
    assert journal.state.truncated_bytes == 0
    journal.close()


def test_a_torn_tail_is_cut_off_at_every_byte_offset(tmp_path: Path) -> None:
    states = sample(tmp_path / "j")
    log = tmp_path / "j" / "log"
    whole = log.read_bytes()
    last_record = 4 + 4 + 1 + 8 + 4 + 40  # header, kind, first seq, length, payload
    before = len(whole) - last_record
    for cut in range(before, len(whole)):
        log.write_bytes(whole[:cut])
        journal = Journal(str(tmp_path / "j"))
        assert snapshot(journal.state) == states[-2], cut
        assert journal.state.truncated_bytes == cut - before
        assert os.path.getsize(log) == before
        # The journal goes on cleanly after the cut.
        journal.record_sent(4, [b"again"])
        journal.close()
        reopened = Journal(str(tmp_path / "j"))
        assert reopened.state.unacked[4] == b"again"
        reopened.close()


def test_a_damaged_record_with_intact_records_after_it_is_reported_and_the_file_kept(tmp_path: Path) -> None:
    sample(tmp_path / "j")
    log = tmp_path / "j" / "log"
    data = bytearray(log.read_bytes())
    session_record = 4 + 4 + 1 + 48
    data[session_record + 12] ^= 0x40  # inside the first SENT record; four records follow it
    log.write_bytes(bytes(data))
    with pytest.raises(JournalDamaged, match=f"damaged at byte {session_record}") as raised:
        Journal(str(tmp_path / "j"))
    assert raised.value.path == str(log) and raised.value.offset == session_record
    assert log.read_bytes() == bytes(data)  # not cut: the intact records can still be recovered
    # The lock was released: once the operator has dealt with it, the journal opens again.
    log.unlink()
    Journal(str(tmp_path / "j")).close()


def test_every_flipped_bit_gives_the_original_state_or_a_typed_error(tmp_path: Path) -> None:
    """A single flipped bit anywhere in a multi-record journal: opening it gives
    back exactly what was recorded, or raises JournalDamaged and leaves the
    file as it is; never a silently shorter state."""
    states = sample(tmp_path / "j")
    log = tmp_path / "j" / "log"
    whole = log.read_bytes()
    damaged = 0
    for index in range(len(whole)):
        for bit in range(8):
            flipped = bytearray(whole)
            flipped[index] ^= 1 << bit
            log.write_bytes(bytes(flipped))
            try:
                journal = Journal(str(tmp_path / "j"))
            except JournalDamaged as exc:
                assert log.read_bytes() == bytes(flipped), (index, bit)
                assert exc.offset <= index, (index, bit)  # the damage is where the bit is, or in its record
                damaged += 1
                continue
            assert snapshot(journal.state) == states[-1] and journal.state.truncated_bytes == 0, (index, bit)
            journal.close()
    assert damaged == 8 * len(whole)  # every bit is covered by a length or a checksum


def test_space_allocated_and_never_written_is_a_torn_tail(tmp_path: Path) -> None:
    """After a power cut some file systems show the file's new size with zeros
    where the last write never landed: that is a torn tail, cut off."""
    states = sample(tmp_path / "j")
    log = tmp_path / "j" / "log"
    whole = log.read_bytes()
    log.write_bytes(whole + bytes(100))
    journal = Journal(str(tmp_path / "j"))
    assert snapshot(journal.state) == states[-1] and journal.state.truncated_bytes == 100
    journal.close()
    assert log.read_bytes() == whole


def test_a_torn_tail_inside_a_large_record_is_cut_without_a_long_scan(tmp_path: Path) -> None:
    """A crash while a large message was being written: the torn tail is
    random payload, which the check for intact records after the damage
    must search quickly and find nothing in."""
    states = sample(tmp_path / "j")
    log = tmp_path / "j" / "log"
    whole = log.read_bytes()
    journal = Journal(str(tmp_path / "j"))
    journal.record_sent(5, [os.urandom(4 * 1024 * 1024)])
    journal.close()
    torn = log.read_bytes()[: len(whole) + 3 * 1024 * 1024]
    log.write_bytes(torn)
    journal = Journal(str(tmp_path / "j"))
    assert snapshot(journal.state) == states[-1]
    assert journal.state.truncated_bytes == len(torn) - len(whole)
    journal.close()


def test_a_journal_held_by_another_live_process_is_refused(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from reliable_tcp.durable.journal import Journal; j = Journal(sys.argv[1]); "
         "print('held', flush=True); sys.stdin.read()",
         str(tmp_path / "j")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(JournalLocked):
            Journal(str(tmp_path / "j"))
    finally:
        holder.kill()
        holder.wait()
    Journal(str(tmp_path / "j")).close()  # the dead process's lock went with it


def test_group_commit_shares_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal(str(tmp_path / "j"))
    calls = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    barrier = threading.Barrier(8)

    def writer(n: int) -> None:
        barrier.wait()
        for i in range(50):
            position = journal.record_consumed(n * 1000 + i)
            journal.sync(position)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert 1 <= len(calls) < 400  # 400 syncs asked for, fewer fsyncs done
    journal.close()


def test_compaction_bounds_the_size_and_keeps_the_state(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "j"))
    journal.record_session(b"i" * 16, b"s" * 16)
    seq = 1
    for _ in range(200):
        journal.record_sent(seq, [b"x" * 1000])
        journal.record_acked(seq)
        seq += 1
    journal.record_sent(seq, [b"pending"])
    grown = journal.size()
    expected = snapshot(journal.state)
    journal.compact()
    assert journal.size() < grown / 20
    assert snapshot(journal.state) == expected
    journal.record_sent(seq + 1, [b"after"])
    journal.close()
    reopened = Journal(str(tmp_path / "j"))
    assert reopened.state.unacked == {seq: b"pending", seq + 1: b"after"}
    assert reopened.state.next_seq == seq + 2 and reopened.state.acked == seq - 1
    reopened.close()


operations = st.lists(
    st.one_of(
        st.tuples(st.just("sent"), st.lists(st.binary(max_size=20), min_size=1, max_size=4)),
        st.tuples(st.just("acked"), st.integers(0, 30)),
        st.tuples(st.just("consumed"), st.integers(0, 30)),
        st.tuples(st.just("compact"), st.none()),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(ops=operations)
def test_reopening_always_gives_back_what_was_recorded(tmp_path_factory: pytest.TempPathFactory, ops: list) -> None:
    directory = str(tmp_path_factory.mktemp("j"))
    journal = Journal(directory, fsync=False)
    journal.record_session(b"a" * 16, b"b" * 16)
    for kind, value in ops:
        if kind == "sent":
            journal.record_sent(journal.state.next_seq, value)
        elif kind == "acked":
            journal.record_acked(min(value, journal.state.next_seq - 1))
        elif kind == "consumed":
            journal.record_consumed(value)
        else:
            journal.compact()
    expected = snapshot(journal.state)
    journal.close()
    reopened = Journal(directory, fsync=False)
    assert snapshot(reopened.state) == expected
    reopened.close()
