"""Hypothesis drives two engines through sends, partial deliveries, stalls,
cuts, reconnects, time jumps and closes, and checks the ordering invariants
after every step."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from enginepair import EnginePair
from reliable_tcp.core import events as ev
from reliable_tcp.core.config import SessionConfig
from reliable_tcp.exceptions import ChannelClosed
from reliable_tcp.core.state import CLOSING_STATES, TERMINAL_STATES, SessionState

CONFIG = SessionConfig(
    heartbeat_interval=1.0,
    dead_after=3.0,
    resume_window=20.0,
    handshake_timeout=2.0,
    window_messages=6,
    window_bytes=48,
    max_message_size=16,
    ack_every=3,
    ack_delay=0.05,
    data_frame_target=20,
)

sides = st.sampled_from(["client", "server"])


class TwoEngines(RuleBasedStateMachine):
    """The model: a client and a server engine on an unreliable in-memory link."""

    config = CONFIG

    def __init__(self) -> None:
        super().__init__()
        self.pair = EnginePair(self.config, seed=0)
        self.counter = 0
        # Connection failures (both sides) when the first close was called, or None.
        self.failures_at_close: int | None = None
        self.cuts = 0

    # ---------------------------------------------------------------- rules

    @initialize(handshake=st.sampled_from([True, True, True, False]))
    def start(self, handshake: bool) -> None:
        # Most runs start from an open session; some from nothing at all.
        if handshake:
            self.pair.connect()
            self.deliver_everything()

    @precondition(lambda self: not self.pair.connected and self.pair.client.state in (SessionState.IDLE, SessionState.DETACHED))
    @rule()
    def connect(self) -> None:
        self.pair.connect()

    @precondition(lambda self: not self.pair.connected and self.pair.client.state in (SessionState.IDLE, SessionState.DETACHED))
    @rule()
    def reconnect_and_deliver(self) -> None:
        self.pair.connect()
        self.deliver_everything()

    def may_send(self, side: str) -> bool:
        """Whether ``side`` can send now. After either side's CLOSE (answered
        or not) both ways of sending are refused, typed: that is checked here."""
        engine = self.pair.engine(side)
        if engine is None or engine.state in TERMINAL_STATES:
            return False
        if engine.state in CLOSING_STATES or self.pair.record(side).peer_closed:
            with pytest.raises(ChannelClosed):
                engine.send_message(b"late", self.pair.now)
            with pytest.raises(ChannelClosed):
                engine.send_messages([b"late"], self.pair.now)
            return False
        return True

    @rule(side=sides, size=st.integers(0, 16))
    def send(self, side: str, size: int) -> None:
        if not self.may_send(side):
            return
        self.counter += 1
        payload = f"{side[0]}{self.counter}".encode().ljust(size, b".")[: max(size, len(str(self.counter)) + 1)]
        self.pair.send(side, payload[:16])

    @rule(side=sides, sizes=st.lists(st.integers(0, 16), min_size=1, max_size=8))
    def send_batch(self, side: str, sizes: list[int]) -> None:
        if not self.may_send(side):
            return
        payloads = []
        for size in sizes:
            self.counter += 1
            payloads.append(f"{side[0]}{self.counter}".encode().ljust(size, b".")[:16])
        queued = self.pair.send_batch(side, payloads)
        assert queued <= len(payloads)

    @rule(count=st.integers(1, 200))
    def deliver_to_server(self, count: int) -> None:
        self.pair.deliver_to_server(count)

    @rule(count=st.integers(1, 200))
    def deliver_to_client(self, count: int) -> None:
        self.pair.deliver_to_client(count)

    @rule()
    def deliver_everything(self) -> None:
        for _ in range(3):
            self.pair.deliver_to_server(len(self.pair.to_server))
            self.pair.deliver_to_client(len(self.pair.to_client))

    @rule()
    def cut(self) -> None:
        self.cuts += self.pair.connected
        self.pair.cut()

    @rule(seconds=st.sampled_from([0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 2.5, 4.0, 25.0]))
    def advance(self, seconds: float) -> None:
        self.pair.advance(seconds)

    @rule(side=sides, dice=st.integers(0, 7))
    def close(self, side: str, dice: int) -> None:
        # Closing ends the interesting part of a run, so it is rare.
        if dice:
            return
        engine = self.pair.engine(side)
        if engine is not None:
            if self.failures_at_close is None and engine.state is SessionState.OPEN:
                self.failures_at_close = self._failures()
            engine.close(self.pair.now)
            self.pair.step()

    def _failures(self) -> int:
        """Connections lost so far: cut by the model, or judged dead by an engine."""
        return self.cuts + sum(rec.transport_failures for rec in self.pair.records.values())

    # ----------------------------------------------------------- invariants

    @invariant()
    def delivered_is_an_in_order_duplicate_free_prefix_of_sent(self) -> None:
        for side, peer in (("client", "server"), ("server", "client")):
            delivered = self.pair.record(peer).delivered
            sent = self.pair.record(side).sent
            assert delivered == sent[: len(delivered)]

    @invariant()
    def acknowledged_means_delivered(self) -> None:
        for side, peer in (("client", "server"), ("server", "client")):
            assert self.pair.record(side).acked <= len(self.pair.record(peer).delivered)

    @invariant()
    def windows_stay_in_bounds(self) -> None:
        for engine in (self.pair.client, self.pair.server):
            if engine is not None:
                assert engine.unacked_count <= CONFIG.window_messages
                assert engine.unacked_bytes <= max(CONFIG.window_bytes, CONFIG.max_message_size)

    @invariant()
    def nothing_acknowledged_is_sent_again(self) -> None:
        for side in ("client", "server"):
            for first_seq, acked_then in self.pair.record(side).data_sent_after_ack:
                assert first_seq > acked_then

    @invariant()
    def an_ended_session_accounts_for_every_message(self) -> None:
        for side, peer in (("client", "server"), ("server", "client")):
            ended = self.pair.record(side).ended
            if ended is None:
                continue
            assert isinstance(ended, (ev.SessionClosed, ev.SessionFailed))
            sent = self.pair.record(side).sent
            delivered = len(self.pair.record(peer).delivered)
            reported = [seq for seq, _ in ended.unacked]
            # The unacked ones are exactly the tail after the last ack, and every
            # message is either delivered to the peer or reported back.
            assert reported == list(range(len(sent) - len(reported) + 1, len(sent) + 1))
            assert [p for _, p in ended.unacked] == sent[len(sent) - len(reported) :]
            assert delivered >= len(sent) - len(reported)

    def teardown(self) -> None:
        pair = self.pair
        event(f"client ended in {pair.client.state.value}")
        event(f"resumes: {min(pair.client.counters.resumes, 3)}{'+' if pair.client.counters.resumes > 3 else ''}")
        event(f"retransmitted > 0: {pair.client.retransmitted + (pair.server.retransmitted if pair.server else 0) > 0}")
        event(f"orphans: {len(pair.orphans)}")
        event(f"client crashes: {min(pair.record('client').crashes, 2)}")
        pair.settle()
        pair.expire_orphans()
        for engine, rec in pair.orphans:
            # An orphan was never reached by the client: all it sent comes back.
            assert isinstance(rec.ended, (ev.SessionFailed, ev.SessionClosed)), (engine.state, rec.ended)
            assert [p for _, p in rec.ended.unacked] == rec.sent
        client_rec, server_rec = pair.record("client"), pair.record("server")
        undisturbed_close = self.failures_at_close is not None and self._failures() == self.failures_at_close
        if undisturbed_close and not self.config.ack_on_commit and not pair.orphans:
            # A close handshake that ran to its end acknowledges everything in
            # flight both ways: nothing delivered is ever reported unacknowledged.
            assert isinstance(client_rec.ended, ev.SessionClosed) and isinstance(server_rec.ended, ev.SessionClosed)
            assert client_rec.ended.unacked == () and server_rec.ended.unacked == ()
            assert server_rec.delivered == client_rec.sent and client_rec.delivered == server_rec.sent
            event("close handshake completed")
        if pair.client.state in TERMINAL_STATES:
            self.an_ended_session_accounts_for_every_message()
            return
        # A healthy link and time to spare: everything is delivered exactly once.
        assert server_rec.delivered == client_rec.sent
        assert client_rec.delivered == server_rec.sent
        assert pair.client.unacked_count == 0
        assert pair.server is not None and pair.server.unacked_count == 0


TwoEngines.TestCase.settings = settings(stateful_step_count=60)
test_two_engines = TwoEngines.TestCase


class TwoEnginesWithKey(TwoEngines):
    """The same model with a pre-shared key: every handshake takes two round trips."""

    config = replace(CONFIG, psk=b"model-test-pre-shared-key")


TwoEnginesWithKey.TestCase.settings = settings(stateful_step_count=60, max_examples=max(50, settings().max_examples // 4))
test_two_engines_with_key = TwoEnginesWithKey.TestCase


class DurableClient(TwoEngines):
    """Acknowledge-on-commit on both sides, and a client process that can
    crash and restart from its journal's state at any step. The invariant
    that matters: nothing acknowledged is ever lost to a crash (acked never
    exceeds what the peer committed), and after healing everything sent is
    delivered, exactly once past the last commit."""

    config = replace(CONFIG, ack_on_commit=True)

    @rule(side=sides, part=st.integers(0, 4))
    def commit(self, side: str, part: int) -> None:
        delivered = len(self.pair.record(side).delivered)
        self.pair.commit(side, delivered * part // 4)

    @precondition(
        lambda self: any(self.pair.client.session_id)
        and self.pair.client.state in (SessionState.OPEN, SessionState.DETACHED, SessionState.RESUMING)
    )
    @rule()
    def crash_client(self) -> None:
        self.pair.crash_client()

    @invariant()
    def acknowledged_means_committed(self) -> None:
        client = self.pair.client
        assert self.pair.record("server").acked <= client.committed
        assert client.committed <= len(self.pair.record("client").delivered)


DurableClient.TestCase.settings = settings(stateful_step_count=60, max_examples=max(50, settings().max_examples // 4))
test_durable_client = DurableClient.TestCase
