"""Every (state, input) pair of the table, through the engine's public API."""

from __future__ import annotations

import itertools

import pytest

from enginepair import EnginePair
from reliable_tcp.core import frames as f
from reliable_tcp.core.config import SessionConfig
from reliable_tcp.core.engine import SessionEngine
from reliable_tcp.exceptions import InvalidState
from reliable_tcp.core.state import (
    LIVE_STATES,
    LOCAL_INPUTS,
    TERMINAL_STATES,
    TRANSITIONS,
    SessionInput,
    SessionState,
    diagram,
    next_state,
)

S, I = SessionState, SessionInput
# With a pre-shared key, so that CHALLENGE has a state where it is valid.
PSK = b"table-test-key-16"
CONFIG = SessionConfig(heartbeat_interval=1.0, resume_window=10.0, handshake_timeout=2.0, ack_delay=0.01, psk=PSK)


def test_terminal_states_absorb_everything() -> None:
    for state, event in itertools.product(TERMINAL_STATES, SessionInput):
        assert next_state(state, event) is state


def test_every_state_is_reachable_and_every_live_state_can_end() -> None:
    reachable = {S.IDLE}
    while True:
        grown = reachable | {TRANSITIONS[(s, i)] for s, i in TRANSITIONS if s in reachable}
        if grown == reachable:
            break
        reachable = grown
    # FAILED is where every pair outside the table leads.
    assert reachable | {S.FAILED} == set(SessionState)
    for state in set(SessionState) - TERMINAL_STATES:
        assert any(next_state(state, i) in TERMINAL_STATES for i in SessionInput), state


def test_hello_is_never_valid_inside_a_session() -> None:
    assert all(next_state(s, I.RECV_HELLO) in (None, s) for s in SessionState)
    assert all(next_state(s, I.RECV_HELLO) is None for s in set(SessionState) - TERMINAL_STATES)


def test_diagram_lists_every_live_transition() -> None:
    text = diagram()
    for (state, event), target in TRANSITIONS.items():
        if state not in TERMINAL_STATES:
            assert f"{state.value} --> {target.value}" in text
            assert event.value in text


# ----------------------------------------------------------- engine in a state


def engine_in(state: SessionState, client: bool) -> tuple[SessionEngine, EnginePair]:
    """An engine of the given role in ``state``, with its pair (for the clock)."""
    pair = EnginePair(CONFIG)
    if client and state is S.IDLE:
        return pair.client, pair
    if not client and state is S.IDLE:
        return SessionEngine(CONFIG, client=False), pair
    if client and state is S.CONNECTING:
        pair.connect()
        return pair.client, pair
    if client and state is S.RESUMING:
        # A handshake that follows a lost connection, so the resume window runs.
        pair.connect()
        for _ in range(2):
            pair.deliver_to_server(10_000)
            pair.deliver_to_client(10_000)
        pair.cut()
        pair.connect()
        return pair.client, pair
    pair.connect()
    for _ in range(2):  # HELLO / CHALLENGE, then PROOF / ACCEPT
        pair.deliver_to_server(10_000)
        pair.deliver_to_client(10_000)
    engine = pair.client if client else pair.server
    assert engine is not None and engine.state is S.OPEN
    pair.send("client", b"c")
    pair.send("server", b"s")
    if state is S.OPEN:
        return engine, pair
    if state is S.CLOSING:
        engine.close(pair.now)
    elif state is S.CLOSE_ACKED:
        engine.close(pair.now)
        engine.receive_data(f.encode(f.CloseAck(engine.next_seq - 1)), pair.now)
    elif state is S.PEER_CLOSED:
        engine.receive_data(f.encode(f.Close(engine.receive_expect - 1)), pair.now)
    elif state is S.DETACHED:
        pair.cut()
    elif state is S.CLOSED:
        pair.cut()
        engine.close(pair.now)
    elif state is S.LOST:
        pair.cut()
        engine.handle_timer(pair.now + CONFIG.resume_window)
    elif state is S.FAILED:
        engine.receive_data(f.encode(f.Ack(999)), pair.now)  # ack for a message never sent
    else:  # pragma: no cover
        raise AssertionError(state)
    assert engine.state is state, (engine.state, state)
    return engine, pair


def _frame_for(event: SessionInput, engine: SessionEngine) -> bytes:
    """A frame for ``event`` that is valid in content, so only the state decides."""
    resuming = engine.state is S.RESUMING
    ids = engine.session_id if engine.session_id != bytes(16) else bytes(range(16))
    base = engine.next_seq - engine.unacked_count
    return {
        I.RECV_HELLO: lambda: f.encode(f.Hello(True, ids, bytes(16), 1)),
        # With the key configured, ACCEPT is only valid after the key exchange.
        I.RECV_ACCEPT: lambda: (
            f.encode(f.Challenge(bytes(16), _server_proof(engine))) if engine.state in (S.CONNECTING, S.RESUMING) else b""
        ) + f.encode(f.Accept(resuming, ids, bytes(range(16, 32)), base)),
        I.RECV_REJECT: lambda: f.encode(f.Reject(f.RejectReason.SESSION_UNKNOWN, "no")),
        I.RECV_REJECT_RETRY: lambda: f.encode(f.Reject(f.RejectReason.SERVER_BUSY, "later")),
        I.RECV_DATA: lambda: f.encode_data(engine.receive_expect, 0, [b"x"]),
        I.RECV_ACK: lambda: f.encode(f.Ack(max(0, base - 1))),
        I.RECV_PING: lambda: f.encode(f.Ping(1)),
        I.RECV_PONG: lambda: f.encode(f.Pong(1)),
        I.RECV_CLOSE: lambda: f.encode(f.Close(engine.receive_expect - 1)),
        I.RECV_CLOSE_ACK: lambda: f.encode(f.CloseAck(engine.next_seq - 1)),
        I.RECV_CHALLENGE: lambda: f.encode(f.Challenge(bytes(16), _server_proof(engine))),
        I.RECV_PROOF: lambda: f.encode(f.Proof(bytes(32))),
    }[event]()


def _server_proof(engine: SessionEngine) -> bytes:
    from reliable_tcp.core import auth

    nonce = engine._auth_nonce or bytes(16)
    return auth.server_proof(PSK, nonce, bytes(16))


def _apply(engine: SessionEngine, pair: EnginePair, event: SessionInput) -> None:
    """Drive ``event`` through the public API."""
    now = pair.now
    if event is I.CONNECTION_MADE:
        engine.connection_made(now)
    elif event is I.ATTACHED:
        hello = f.Hello(True, engine.session_id, engine.secret, engine.next_seq - engine.unacked_count)
        engine.attach(hello, bytes(range(16)), now)
    elif event.name.startswith("RECV_"):
        engine.receive_data(_frame_for(event, engine), now)
    elif event is I.TRANSPORT_LOST:
        engine.transport_lost(now)
    elif event is I.PEER_DEAD:
        engine.handle_timer(now + max(CONFIG.dead_after_seconds, CONFIG.handshake_timeout))
    elif event is I.RESUME_EXPIRED:
        engine.handle_timer(now + CONFIG.resume_window)
    elif event is I.CLOSE_CALLED:
        engine.close(now)
    elif event is I.ABORT_CALLED:
        engine.abort(now)
    else:  # pragma: no cover
        raise AssertionError(event)


ROLE_OF_INPUT = {I.CONNECTION_MADE: [True], I.ATTACHED: [False]}
STATES_OF_ROLE = {True: list(SessionState), False: [s for s in SessionState if s not in (S.CONNECTING, S.RESUMING)]}
CONNECTED = LIVE_STATES | {S.CONNECTING, S.RESUMING}
# Some inputs exist only in some states: timer verdicts where a timer runs
# (handle_timer does nothing elsewhere, which a test below checks), frames
# where a connection exists (bytes without one are the shell's mistake),
# STALLED at the end of a connection (its own test below).
WHERE_INPUT_EXISTS = {
    I.PEER_DEAD: CONNECTED,
    I.RESUME_EXPIRED: {S.DETACHED, S.RESUMING},
    I.STALLED: set(),
    **{i: CONNECTED | TERMINAL_STATES for i in SessionInput if i.name.startswith("RECV_")},
}


@pytest.mark.parametrize(
    ("state", "event", "client"),
    [
        (state, event, client)
        for event in SessionInput
        for client in ROLE_OF_INPUT.get(event, [True, False])
        for state in STATES_OF_ROLE[client]
        if state in WHERE_INPUT_EXISTS.get(event, set(SessionState))
    ],
    ids=lambda v: v.name if hasattr(v, "name") else ("client" if v else "server"),
)
def test_engine_follows_the_table(state: SessionState, event: SessionInput, client: bool) -> None:
    engine, pair = engine_in(state, client)
    expected = next_state(state, event)
    if expected is None and event in LOCAL_INPUTS:
        # The caller's mistake: raised, and nothing changes (nothing is sent).
        with pytest.raises(InvalidState):
            _apply(engine, pair, event)
        assert engine.state is state
        return
    _apply(engine, pair, event)
    assert engine.state is (expected if expected is not None else S.FAILED)
    if expected is None:
        (reject,) = [x for x in f.FrameDecoder(1 << 20).feed(engine.data_to_send()) if isinstance(x, f.Reject)]
        assert reject.reason is f.RejectReason.PROTOCOL_ERROR


@pytest.mark.parametrize("state", [S.IDLE, S.CLOSED, S.LOST, S.FAILED])
def test_timers_do_nothing_where_no_verdict_exists(state: SessionState) -> None:
    engine, pair = engine_in(state, client=True)
    assert engine.next_deadline() is None
    engine.handle_timer(pair.now + 1e6)
    assert engine.state is state


@pytest.mark.parametrize("state", [S.IDLE, S.DETACHED])
def test_bytes_without_a_connection_are_the_callers_mistake(state: SessionState) -> None:
    engine, pair = engine_in(state, client=True)
    with pytest.raises(InvalidState):
        engine.receive_data(f.encode(f.Ping(1)), pair.now)
    assert engine.state is state


def test_connections_that_move_nothing_end_the_session_as_stalled() -> None:
    config = SessionConfig(heartbeat_interval=1.0, resume_window=1000.0, max_resumes_without_progress=3)
    pair = EnginePair(config)
    pair.connect()
    pair.deliver_to_server(10_000)
    pair.deliver_to_client(10_000)
    pair.send("client", b"never arrives")
    for attempt in range(3):
        assert pair.client.state is S.OPEN, attempt
        pair.cut()  # each connection dies before the message gets through
        pair.connect()
        pair.deliver_to_server(10_000)
        pair.deliver_to_client(10_000)
        pair.to_server.clear()  # the replayed DATA is lost again
    pair.cut()
    assert pair.client.state is S.LOST
    ended = pair.records["client"].ended
    assert ended is not None and "3 connections in a row" in ended.reason  # type: ignore[union-attr]
    assert ended.unacked == ((1, b"never arrives"),)  # type: ignore[union-attr]


def test_a_connection_that_moves_a_message_resets_the_stall_count() -> None:
    config = SessionConfig(heartbeat_interval=1.0, resume_window=1000.0, max_resumes_without_progress=2)
    pair = EnginePair(config)
    pair.connect()
    pair.deliver_to_server(10_000)
    pair.deliver_to_client(10_000)
    for round_ in range(5):
        pair.send("client", b"m%d" % round_)
        pair.cut()  # fruitless: the message was lost with the connection
        pair.connect()
        pair.deliver_to_server(10_000)
        pair.deliver_to_client(10_000)
        pair.deliver_to_server(10_000)  # this one gets it through: progress
        pair.advance(config.ack_delay)
        pair.deliver_to_client(10_000)
        assert pair.client.state is S.OPEN and pair.client.unacked_count == 0, round_


def test_protocol_document_shows_the_current_tables() -> None:
    from pathlib import Path

    from reliable_tcp.core.state import event_table, frame_table

    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    for table in (frame_table(client=True), frame_table(client=False), event_table()):
        assert table in doc
