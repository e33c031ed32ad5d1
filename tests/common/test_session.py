"""The shared session policy, byte-free: evidence in, actions out.

Both front ends carry these actions out; what is decided here is decided
once. The connections are plain strings: the session only holds them.
"""

from __future__ import annotations

import dataclasses

import random
import socket

import pytest

from reliable_tcp.common.backoff import Backoff
from reliable_tcp.common.ending import Ending
from reliable_tcp.common.session import (
    CHANGED,
    OUTPUT,
    Acknowledged,
    Action,
    Deliver,
    DropLink,
    Ended,
    LivenessCheck,
    LivenessEvidence,
    Notify,
    Persist,
    SessionPolicy,
    gather_evidence,
)
from reliable_tcp.core.config import SessionConfig
from reliable_tcp.core.engine import SessionEngine
from reliable_tcp.core.frames import Hello, Reject, RejectReason, encode, with_retry_after
from reliable_tcp.core.handshake import ServerHandshake, SessionRegistry
from reliable_tcp.core.state import SessionState
from reliable_tcp.exceptions import ChannelClosed, JournalError, SessionLost

#: The classic heartbeat: these tests time the probes by its interval.
CONFIG = SessionConfig(heartbeat_interval=1.0, dead_after=3.0, resume_window=30.0, quiet_heartbeat=False)
NOTHING = LivenessEvidence()


def _of(actions: list[Action], kind: type) -> list[Action]:
    return [action for action in actions if isinstance(action, kind)]


def _events(actions: list[Action]) -> list[str]:
    return [action.event.kind for action in actions if isinstance(action, Notify)]


class Pair:
    """A client session and a server session joined by hand, on a virtual clock."""

    def __init__(self, *, durable_server: bool = False, quiet: bool = False) -> None:
        rng = random.Random(7)
        self.now = 100.0
        config = dataclasses.replace(CONFIG, quiet_heartbeat=quiet)
        self.registry = SessionRegistry(config, token_source=rng.randbytes)
        self.client: SessionPolicy[str] = SessionPolicy(
            SessionEngine(config, client=True, token_source=rng.randbytes), "client", durable=False, restored=False, wants_events=True)
        self.server: SessionPolicy[str] | None = None
        self._durable_server = durable_server
        self._handshake = ServerHandshake(None, rng.randbytes)
        self.server_actions: list[Action] = []

    def hello(self, link: str = "c1") -> Hello:
        actions, refusal = self.client.open_link(link, self.now)
        assert refusal is None and OUTPUT in actions and CHANGED in actions
        hello = self._handshake.receive_data(self.client.engine.data_to_send(self.now))
        assert hello is not None
        self._handshake = ServerHandshake(None, random.Random(8).randbytes)
        return hello

    def connect(self) -> list[Action]:
        """The first handshake over links c1/s1; the server's actions."""
        engine = self.registry.start(self.hello(), self.now)
        self.server = SessionPolicy(engine, "server", durable=self._durable_server, restored=False, wants_events=True)
        actions, refusal = self.server.open_link("s1", self.now)
        assert refusal is None
        self.server_actions = actions
        if self.server.output_allowed:
            self.pump()
        return actions

    def pump(self, server_link: str = "s1", client_link: str = "c1") -> tuple[list[Action], list[Action]]:
        """Move bytes both ways until both are quiet; each side's actions."""
        assert self.server is not None
        client_actions: list[Action] = []
        server_actions: list[Action] = []
        for _ in range(10):
            to_client = self.server.engine.data_to_send(self.now) if self.server.output_allowed else b""
            if to_client:
                client_actions += self.client.received(client_link, to_client, self.now)
            to_server = self.client.engine.data_to_send(self.now)
            if to_server:
                server_actions += self.server.received(server_link, to_server, self.now)
            if not to_client and not to_server:
                break
        return client_actions, server_actions


def test_the_first_handshake_reports_connected_once() -> None:
    pair = Pair()
    pair.connect()
    client_actions, _ = pair.pump()
    assert pair.client.ever_connected and pair.client.link == "c1"
    assert pair.client.engine.state is SessionState.OPEN
    assert pair.server is not None and pair.server.ever_connected
    assert "connected" in _events(pair.server_actions)


def test_messages_and_acks_become_deliver_and_acknowledged() -> None:
    pair = Pair()
    pair.connect()
    pair.pump()
    pair.client.engine.send_message(b"one", pair.now)
    pair.client.engine.send_message(b"two", pair.now)
    assert OUTPUT in pair.client.absorb(pair.now)
    _, server_actions = pair.pump()
    delivered = _of(server_actions, Deliver)
    assert [m for action in delivered for m in action.messages] == [b"one", b"two"]  # type: ignore[attr-defined]
    pair.now += 1.0  # the delayed ack falls due
    assert pair.server is not None
    pair.server.timers_due(pair.now, pair.server.liveness_check(pair.now, reading_paused=False) or _no_check(), "s1", NOTHING)
    client_actions, _ = pair.pump()
    assert _of(client_actions, Acknowledged) and pair.client.engine.unacked_count == 0


def _no_check() -> LivenessCheck:
    return LivenessCheck(False, False, False)


def test_a_lost_connection_is_counted_and_reported_once() -> None:
    pair = Pair()
    pair.connect()
    pair.pump()
    error = ConnectionResetError("reset")
    actions = pair.client.link_lost("c1", pair.now, "connection reset", error, abort=True)
    assert actions[0] == DropLink("c1", abort=True)
    assert _events(actions) == ["disconnected"]
    assert pair.client.disconnects == 1 and pair.client.link is None and pair.client.last_cause is error
    # The same connection reported again, or one that no longer holds the session: nothing.
    assert pair.client.link_lost("c1", pair.now, "again", None, abort=False) == []
    assert pair.client.received("c1", b"late bytes", pair.now) == []


def test_only_a_connection_that_proved_itself_restarts_the_backoff() -> None:
    """Issue 25, item 7: a connection that took the handshake and died at
    once proves nothing (the connectors keep backing off); one that carried
    data, or held the session for the backoff's longest delay, does."""
    pair = Pair()
    pair.connect()
    pair.pump()
    assert pair.server is not None
    proving_time = Backoff().maximum

    def resume(number: int) -> tuple[str, str]:
        assert pair.server is not None
        client_link, server_link = f"c{number}", f"s{number}"  # one object each: links are told apart by identity
        hello = pair.hello(client_link)
        _, refusal = pair.server.open_link(server_link, pair.now, order=number, hello=hello,
                                           new_secret=bytes([number]) * 16)
        assert refusal is None
        pair.pump(server_link=server_link, client_link=client_link)
        assert pair.client.link is client_link and pair.client.engine.state is SessionState.OPEN
        return client_link, server_link

    pair.now += proving_time - 0.01
    pair.client.link_lost("c1", pair.now, "cut just short of proving itself", None, abort=True)
    assert pair.client.disconnects == 1 and pair.client.proven_links == 0
    c2, _ = resume(2)
    pair.now += proving_time + 0.01
    pair.client.link_lost(c2, pair.now, "cut after holding the session long enough", None, abort=True)
    assert pair.client.proven_links == 1
    c3, s3 = resume(3)
    pair.client.engine.send_message(b"data", pair.now)
    pair.client.absorb(pair.now)
    pair.pump(server_link=s3, client_link=c3)
    pair.now += 1.0  # the server's delayed ack falls due
    pair.server.timers_due(pair.now, pair.server.liveness_check(pair.now, reading_paused=False) or _no_check(), s3, NOTHING)
    pair.pump(server_link=s3, client_link=c3)
    assert pair.client.engine.unacked_count == 0
    pair.client.link_lost(c3, pair.now, "cut right after moving data", None, abort=True)
    assert pair.client.proven_links == 2
    pair.client.link_lost(c3, pair.now, "reported again", None, abort=True)
    assert pair.client.proven_links == 2


def test_a_resume_replaces_the_connection_and_times_the_recovery() -> None:
    pair = Pair()
    pair.connect()
    pair.pump()
    assert pair.server is not None
    pair.client.link_lost("c1", pair.now, "cut", None, abort=True)
    pair.now += 2.0
    hello = pair.hello("c2")
    actions, refusal = pair.server.open_link("s2", pair.now, order=2, hello=hello, new_secret=b"\x01" * 16)
    assert refusal is None
    assert actions[0] == DropLink("s1", abort=True)  # the old connection still held it on this side
    assert pair.server.link == "s2"
    client_actions, _ = pair.pump(server_link="s2", client_link="c2")
    assert _events(client_actions) == ["resumed"]
    assert pair.client.last_recovery == pytest.approx(2.0)


def test_a_resume_older_than_the_current_connection_is_refused() -> None:
    pair = Pair()
    pair.connect()
    pair.pump()
    assert pair.server is not None
    pair.client.link_lost("c1", pair.now, "cut", None, abort=True)
    hello = pair.hello("c2")
    actions, refusal = pair.server.open_link("s0", pair.now, order=-1, hello=hello, new_secret=b"\x01" * 16)
    assert refusal is not None and refusal.reason == RejectReason.SESSION_UNKNOWN
    assert pair.server.link == "s1" and not _of(actions, DropLink)


def test_a_stopping_session_takes_no_connection() -> None:
    pair = Pair()
    pair.client.stop()
    actions, refusal = pair.client.open_link("c1", pair.now)
    assert refusal is not None and pair.client.link is None and actions == []


def test_a_durable_server_holds_its_accept_until_the_secret_is_journaled() -> None:
    pair = Pair(durable_server=True)
    actions = pair.connect()
    assert pair.server is not None
    assert _of(actions, Persist) and not pair.server.output_allowed
    assert pair.server.engine.has_output()  # the ACCEPT waits
    assert OUTPUT in pair.server.persisted(None)
    assert pair.server.output_allowed


def test_a_journal_that_refuses_the_session_record_breaks_the_session() -> None:
    pair = Pair(durable_server=True)
    pair.connect()
    assert pair.server is not None
    actions = pair.server.persisted(JournalError("disk full"))
    ended = _of(actions, Ended)
    assert len(ended) == 1 and ended[0].ending.kind == "broken"  # type: ignore[attr-defined]
    assert "journal refused" in ended[0].ending.reason  # type: ignore[attr-defined]
    assert pair.server.output_allowed  # the last frames (the REJECT) may leave


def test_the_end_is_recorded_once_and_chained_to_the_last_failure() -> None:
    pair = Pair()
    pair.connect()
    pair.pump()
    pair.client.engine.send_message(b"pending", pair.now)
    cause = ConnectionResetError("reset by peer")
    pair.client.link_lost("c1", pair.now, "reset", cause, abort=True)
    pair.now += CONFIG.resume_window + 1
    check = pair.client.liveness_check(pair.now, reading_paused=False) or _no_check()
    actions = pair.client.timers_due(pair.now, check, None, NOTHING)
    ended = _of(actions, Ended)
    assert len(ended) == 1
    error = pair.client.ending.exception() if pair.client.ending else None
    assert isinstance(error, SessionLost) and error.__cause__ is cause
    assert [seq for seq, _ in error.unacked] == [1]
    assert pair.client.end(Ending.of("broken", "later", (), None)) == []  # already ended
    assert pair.client.next_timer() is None
    with pytest.raises(SessionLost):
        pair.client.raise_if_closed()


def test_a_closing_session_refuses_sends() -> None:
    pair = Pair()
    pair.connect()
    pair.pump()
    pair.client.close(pair.now)
    with pytest.raises(ChannelClosed):
        pair.client.raise_if_closed()


def test_a_close_that_times_out_ends_closed_and_keeps_the_fin() -> None:
    pair = Pair()
    pair.connect()
    pair.pump()
    pair.client.close(pair.now)
    actions = pair.client.close_timed_out(pair.now)
    assert actions[0] == DropLink("c1", abort=False)
    assert pair.client.ending is not None and pair.client.ending.kind == "closed"


def test_a_failed_attempt_ends_the_session_only_when_retrying_is_pointless() -> None:
    pair = Pair()
    refused = ConnectionRefusedError(111, "refused")
    assert pair.client.connect_failed(pair.now, refused, "can't connect") == [CHANGED]
    assert pair.client.ending is None and pair.client.last_cause is refused
    typo = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    actions = pair.client.connect_failed(pair.now, typo, "can't connect to nowhere")
    assert pair.client.ending is not None and pair.client.ending.kind == "broken"
    assert pair.client.ending.cause is typo and _of(actions, Ended)


def _silent(pair: Pair, seconds: float) -> None:
    pair.now += seconds


def test_a_silent_peer_gets_the_dead_verdict_unless_the_kernel_vouches_for_it() -> None:
    for evidence, survives in ((NOTHING, False), (LivenessEvidence(input_waiting=True), True)):
        pair = Pair()
        pair.connect()
        pair.pump()
        _silent(pair, CONFIG.dead_after_seconds + 0.5)
        check = pair.client.liveness_check(pair.now, reading_paused=False)
        assert check is not None and check.judge and check.read_error  # silent: the error could be hidden
        actions = pair.client.timers_due(pair.now, check, "c1", evidence)
        assert (pair.client.link == "c1") is survives
        assert bool(_of(actions, DropLink)) is not survives


def test_a_paused_reader_keeps_a_peer_whose_kernel_acknowledges() -> None:
    for age, survives in ((0.5, True), (CONFIG.dead_after_seconds + 1, False)):
        pair = Pair()
        pair.connect()
        pair.pump()
        _silent(pair, CONFIG.dead_after_seconds + 0.5)
        check = pair.client.liveness_check(pair.now, reading_paused=True)
        assert check is not None and check.reading_paused and check.judge
        pair.client.timers_due(pair.now, check, "c1", LivenessEvidence(peer_ack_age=age))
        assert (pair.client.link == "c1") is survives


def test_the_quiet_heartbeat_gives_a_slow_peer_its_second_interval_once() -> None:
    """protocol.md 6.1: with the quiet heartbeat the slack before the
    verdict is one interval; a peer whose kernel acknowledged our bytes
    within dead_after gets one more, once per silence; with no
    acknowledgement (a dead link) the verdict comes at dead_after."""
    for age, held in ((0.5, True), (None, False), (CONFIG.dead_after_seconds + 1, False)):
        pair = Pair(quiet=True)
        pair.connect()
        pair.pump()
        assert pair.client.engine.quiet_heartbeat
        _silent(pair, CONFIG.dead_after_seconds + 0.01)
        check = pair.client.liveness_check(pair.now, reading_paused=False)
        assert check is not None and check.quiet and check.judge
        pair.client.timers_due(pair.now, check, "c1", LivenessEvidence(peer_ack_age=age))
        assert (pair.client.link == "c1") is held
        if not held:
            continue
        _silent(pair, CONFIG.heartbeat_interval)  # the extra interval passes, still nothing from the peer
        check = pair.client.liveness_check(pair.now, reading_paused=False)
        assert check is not None and check.judge
        pair.client.timers_due(pair.now, check, "c1", LivenessEvidence(peer_ack_age=0.5))
        assert pair.client.link is None  # acknowledgements alone never hold it twice: they may be a relay's


def test_the_socket_error_is_read_once_per_heartbeat_and_ends_the_link() -> None:
    pair = Pair()
    pair.connect()
    pair.pump()
    _silent(pair, CONFIG.heartbeat_interval + 0.1)
    check = pair.client.liveness_check(pair.now, reading_paused=False)
    assert check is not None and check.read_error and not check.judge
    again = pair.client.liveness_check(pair.now, reading_paused=False)
    assert again is not None and not again.read_error  # not twice in one interval
    error = TimeoutError(110, "Connection timed out")  # ETIMEDOUT: the kernel gave up on the peer
    actions = pair.client.timers_due(pair.now, check, "c1", LivenessEvidence(error))
    assert actions[0] == DropLink("c1", abort=True) and _events(actions) == ["disconnected"]
    assert pair.client.last_cause is error


def test_the_socket_error_is_read_once_per_heartbeat_whatever_the_reader_does() -> None:
    for paused in (False, True):
        pair = Pair()
        pair.connect()
        pair.pump()
        assert pair.server is not None
        pair.server.engine.send_message(b"x", pair.now)
        pair.pump()  # the client now owes an ack, due within ack_delay
        due = pair.client.engine.next_deadline()
        assert due is not None and due - pair.now < CONFIG.heartbeat_interval
        check = pair.client.liveness_check(due, reading_paused=paused)
        assert check is not None and not check.read_error  # the last look was less than an interval ago
        pair.client.timers_due(due, check, "c1", NOTHING)  # the ack leaves
        pair.now += CONFIG.heartbeat_interval + 0.1
        pair.server.engine.send_message(b"y", pair.now)
        pair.pump()
        due = pair.client.engine.next_deadline()
        assert due is not None
        check = pair.client.liveness_check(due, reading_paused=paused)
        assert check is not None and check.read_error and not check.judge


def test_the_timer_is_asked_for_only_when_it_moves_sooner() -> None:
    pair = Pair()
    assert pair.client.next_timer() is None  # nothing to time before a connection
    pair.client.open_link("c1", pair.now)
    first = pair.client.next_timer()
    assert first is not None and first > pair.now
    assert pair.client.next_timer() is None  # the front already holds that one
    pair.client.engine.send_message(b"x", pair.now)  # not sent yet: nothing sooner
    pair.client.absorb(pair.now)
    assert pair.client.liveness_check(first, reading_paused=False) is not None  # it fired
    assert pair.client.next_timer() is not None  # and the next one is asked for again


def test_evidence_about_a_connection_that_was_replaced_meanwhile_is_ignored() -> None:
    pair = Pair()
    pair.connect()
    pair.pump()
    _silent(pair, CONFIG.heartbeat_interval + 0.1)
    check = pair.client.liveness_check(pair.now, reading_paused=False)
    assert check is not None and check.read_error
    pair.client.link_lost("c1", pair.now, "cut", None, abort=True)
    pair.client.open_link("c2", pair.now)  # (a resume under way)
    actions = pair.client.timers_due(pair.now, check, "c1", LivenessEvidence(ConnectionResetError(104, "reset")))
    assert pair.client.link == "c2" and not _of(actions, DropLink)


class _FakeSocketLink:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def pending_error(self) -> OSError | None:
        self.asked.append("error")
        return None

    def seconds_since_peer_ack(self) -> float | None:
        self.asked.append("peer ack")
        return 0.5

    def has_pending_input(self) -> bool:
        self.asked.append("input")
        return True


def test_only_what_the_check_asks_is_read_from_the_socket() -> None:
    cases = [
        (LivenessCheck(False, False, False), []),
        (LivenessCheck(True, False, False), ["error"]),
        (LivenessCheck(False, True, False), ["input"]),
        (LivenessCheck(True, True, True), ["error", "peer ack"]),
    ]
    for check, asked in cases:
        link = _FakeSocketLink()
        gather_evidence(link, check)
        assert link.asked == asked
    assert gather_evidence(None, LivenessCheck(True, True, False)) == NOTHING


def test_a_refusal_with_a_retry_hint_holds_the_next_attempt_back_once() -> None:
    """Issue 29, item 3: after REJECT SERVER_BUSY with "retry-after-ms=N"
    the next attempt waits the hint, plus up to a quarter of it drawn at
    random; a longer backoff delay still wins; the attempt after that is
    the backoff's again. Without the hint the backoff alone decides."""
    for text, expected in ((with_retry_after(2.0, "restarting"), (2.0, 2.5)), ("busy", None)):
        pair = Pair()
        engine = pair.client.engine
        pair.client.open_link("c1", pair.now)
        engine.data_to_send(pair.now)
        engine.receive_data(encode(Reject(RejectReason.SERVER_BUSY, text)), pair.now)
        pair.client.absorb(pair.now)
        assert pair.client.link is None and not pair.client.ended
        later = pair.now + 0.5
        if expected is None:
            assert pair.client.attempt_delay(later, 0.03, 0.9) == 0.03
            continue
        low, high = expected
        assert pair.client.attempt_delay(later, 0.03, 0.0) == pytest.approx(low - 0.5)
        pair.client._retry_hint = (pair.now + 2.0, 2.0)  # the same refusal, asked again with another draw
        assert pair.client.attempt_delay(later, 0.03, 0.999) == pytest.approx(high - 0.5, abs=0.01)
        assert pair.client.attempt_delay(later, 0.03, 0.5) == 0.03  # used once
        pair.client._retry_hint = (pair.now + 2.0, 2.0)
        assert pair.client.attempt_delay(later, 5.0, 0.5) == 5.0
