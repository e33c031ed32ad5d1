"""The shared listener policy, byte-free: who may open or resume a session,
what a refusal says, what is offered to accept(), the restore after a restart."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reliable_tcp.common.ending import Unacked
from reliable_tcp.common.listener import BUSY_RETRY_AFTER, ListenerBook, drain_pace, read_hello
from reliable_tcp.common.status import ChannelState
from reliable_tcp.core.config import SessionConfig
from reliable_tcp.core.engine import SessionEngine
from reliable_tcp.core.frames import Hello, RejectReason, retry_after
from reliable_tcp.core.handshake import ServerHandshake
from reliable_tcp.durable.session_journal import Durable
from reliable_tcp.exceptions import HandshakeRejected, JournalError

CONFIG = SessionConfig(heartbeat_interval=1.0, resume_window=30.0)


@dataclass
class FakeChannel:
    """A front's session as the book sees it."""

    engine: SessionEngine
    state: ChannelState = ChannelState.CONNECTED
    ended_with: list[tuple[str, Unacked]] = field(default_factory=list)

    @property
    def session_id(self) -> str:
        return self.engine.session_id.hex()

    def end_restored(self, reason: str, unacked: Unacked) -> None:
        self.ended_with.append((reason, unacked))
        self.state = ChannelState.FAILED


def _new_hello() -> Hello:
    client = SessionEngine(CONFIG, client=True, token_source=random.Random(1).randbytes)
    client.connection_made(0.0)
    hello = ServerHandshake(None).receive_data(client.data_to_send(0.0))
    assert hello is not None
    return hello


def _resume_hello(session_id: bytes) -> Hello:
    return Hello(resume=True, session_id=session_id, secret=bytes(16), expect=1)


def _book(**overrides: object) -> ListenerBook[FakeChannel]:
    options = {"max_sessions": 4, "node_id": None, "journal": None} | overrides
    return ListenerBook(CONFIG, **options)  # type: ignore[arg-type]


def test_a_new_session_is_registered_and_offered_only_once_confirmed() -> None:
    book = _book()
    engine = book.start(_new_hello(), 0.0)
    assert isinstance(engine, SessionEngine)
    channel = FakeChannel(engine)
    book.add(engine, channel)
    assert not book.offered and len(book.registry) == 1
    assert book.offer(channel) and list(book.offered) == [channel]
    assert book.resume_target(_resume_hello(engine.session_id)) is channel


def test_refusals_are_values_with_their_reason() -> None:
    book = _book(max_sessions=1)
    first = book.start(_new_hello(), 0.0)
    assert isinstance(first, SessionEngine)
    full = book.start(_new_hello(), 0.0)
    assert isinstance(full, HandshakeRejected) and full.reason == RejectReason.SERVER_BUSY
    unknown = book.resume_target(_resume_hello(b"\x07" * 16))
    assert isinstance(unknown, HandshakeRejected) and unknown.reason == RejectReason.SESSION_UNKNOWN


def test_another_nodes_session_is_refused_as_not_here() -> None:
    book = _book(node_id=3)
    other_node = (5).to_bytes(2, "big") + b"\x01" * 14
    refusal = book.resume_target(_resume_hello(other_node))
    assert isinstance(refusal, HandshakeRejected) and refusal.reason == RejectReason.NOT_HERE


def test_a_closing_listener_refuses_everything_and_offers_nothing() -> None:
    book = _book()
    engine = book.start(_new_hello(), 0.0)
    assert isinstance(engine, SessionEngine)
    channel = FakeChannel(engine)
    book.add(engine, channel)
    assert book.close() == [channel]
    assert not book.offer(channel) and not book.offered
    for refusal in (book.start(_new_hello(), 0.0), book.resume_target(_resume_hello(engine.session_id))):
        assert isinstance(refusal, HandshakeRejected) and refusal.reason == RejectReason.SERVER_BUSY


def test_a_session_without_its_journal_is_refused_and_forgotten(tmp_path: Path) -> None:
    book = _book(journal=str(tmp_path))
    assert book.config.ack_on_commit  # a durable listener acknowledges what its application committed
    engine = book.start(_new_hello(), 0.0)
    assert isinstance(engine, SessionEngine)
    assert book.journal_path(engine) == str(tmp_path / engine.session_id.hex())
    refusal = book.journal_failed(engine, JournalError("disk full"))
    assert refusal.reason == RejectReason.SERVER_BUSY and len(book.registry) == 0


def test_an_ended_session_leaves_and_a_failed_one_is_counted() -> None:
    book = _book()
    engine = book.start(_new_hello(), 0.0)
    assert isinstance(engine, SessionEngine)
    channel = FakeChannel(engine, state=ChannelState.FAILED)
    book.add(engine, channel)
    book.ended(channel)
    assert len(book.registry) == 0 and not book.channels
    stats = book.statistics(pending_handshakes=2)
    assert (stats.sessions, stats.pending_handshakes, stats.sessions_failed) == (0, 2, 1)


def test_restore_offers_a_lost_session_ended_and_waits_for_the_others(tmp_path: Path) -> None:
    book = _book(journal=str(tmp_path))
    engines = []
    for _ in range(2):
        engine = book.start(_new_hello(), 0.0)
        assert isinstance(engine, SessionEngine)
        path = book.journal_path(engine)
        assert path is not None
        durable = Durable.open(path, book.config)
        durable.record_session(engine.session_id, engine.secret, engine.previous_secret)
        engines.append((engine, durable))
    lost_engine, lost_journal = engines[1]
    lost_journal.record_sent(1, [b"never acknowledged"])
    lost_journal.record_end("lost", "resume window expired")
    for _, durable in engines:
        durable.release()

    restarted = _book(journal=str(tmp_path))
    restarted.restore(Durable.open_all_for_listener(str(tmp_path), restarted.config), FakeChannel)
    by_id = {channel.engine.session_id: channel for channel in restarted.offered}
    assert set(by_id) == {engine.session_id for engine, _ in engines}
    waiting, lost = by_id[engines[0][0].session_id], by_id[lost_engine.session_id]
    assert not waiting.ended_with and restarted.resume_target(_resume_hello(engines[0][0].session_id)) is waiting
    assert lost.ended_with and "before the restart" in lost.ended_with[0][0]
    assert [payload for _, payload in lost.ended_with[0][1]] == [b"never acknowledged"]
    assert isinstance(restarted.resume_target(_resume_hello(lost_engine.session_id)), HandshakeRejected)


def test_a_hello_that_cannot_open_a_session_gets_its_refusal() -> None:
    hello, answer, refusal = read_hello(ServerHandshake(None), b"\x00" * 64)
    assert hello is None and answer == b"" and refusal is not None
    assert refusal.reason in (RejectReason.PROTOCOL_ERROR, RejectReason.UNSUPPORTED_VERSION)
    hello, answer, refusal = read_hello(ServerHandshake(b"k" * 32), b"")
    assert (hello, answer, refusal) == (None, b"", None)  # nothing yet: wait for more


def test_a_resume_of_the_zero_session_id_is_a_health_check_answered_session_unknown() -> None:
    """docs/protocol.md 4.6: what a load balancer's check sends, answered at
    once with SESSION_UNKNOWN, also by a node with a node id (no NOT_HERE)."""
    from reliable_tcp.common.listener import PROBE_ANSWER

    for node_id in (None, 3):
        refusal = _book(node_id=node_id).resume_target(_resume_hello(bytes(16)))
        assert isinstance(refusal, HandshakeRejected)
        assert refusal.reason == RejectReason.SESSION_UNKNOWN and refusal.text == PROBE_ANSWER


def test_a_full_listener_says_when_to_come_back() -> None:
    """Issue 29, item 3: SERVER_BUSY for want of room carries the retry hint."""
    book = _book(max_sessions=1)
    assert isinstance(book.start(_new_hello(), 0.0), SessionEngine)
    full = book.start(_new_hello(), 0.0)
    assert isinstance(full, HandshakeRejected)
    assert retry_after(full.reason, full.text) == BUSY_RETRY_AFTER


def test_a_draining_listener_refuses_new_sessions_with_its_hint_and_resumes_only_without_a_journal(tmp_path: Path) -> None:
    """Issue 29, item 3: while draining, a new session is refused with the
    drain's hint. A durable listener refuses its own sessions' resumes the
    same way (they wait in the journal for the restart); one without a
    journal takes them, since its sessions can't outlive it."""
    for journal in (None, str(tmp_path)):
        book = _book(journal=journal)
        engine = book.start(_new_hello(), 0.0)
        assert isinstance(engine, SessionEngine)
        channel = FakeChannel(engine)
        book.add(engine, channel)
        assert book.drain(2.5, timeout=10.0, rate=None) == ([channel], 5.0)
        refused = book.start(_new_hello(), 0.0)
        assert isinstance(refused, HandshakeRejected) and retry_after(refused.reason, refused.text) == 2.5
        resume = book.resume_target(_resume_hello(engine.session_id))
        if journal is None:
            assert resume is channel
        else:
            assert isinstance(resume, HandshakeRejected) and retry_after(resume.reason, resume.text) == 2.5
        unknown = book.resume_target(_resume_hello(b"\x07" * 16))
        assert isinstance(unknown, HandshakeRejected) and unknown.reason == RejectReason.SESSION_UNKNOWN


def test_a_drain_spreads_the_sessions_over_half_its_time_unless_given_a_rate() -> None:
    assert drain_pace(100, 20.0, None) == pytest.approx(0.1)
    assert drain_pace(0, 20.0, None) == 10.0
    assert drain_pace(100, 20.0, 50.0) == pytest.approx(0.02)
