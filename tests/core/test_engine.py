"""Engine scenarios with a virtual clock: liveness, acks, resume, reject, close, limits."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from enginepair import EnginePair
from reliable_tcp.core import events as ev
from reliable_tcp.core import frames as f
from reliable_tcp.core.config import SessionConfig
from reliable_tcp.core.engine import PONGS_PER_SECOND, SessionEngine
from reliable_tcp.exceptions import (
    ChannelBroken,
    ChannelClosed,
    FrameError,
    HandshakeRejected,
    MessageTooLarge,
    ProtocolError,
    RejectedByPeer,
    UsageError,
    WindowFull,
)
from reliable_tcp.core.handshake import HandshakeReader, SessionRegistry, reject_reply
from reliable_tcp.core.state import SessionState as S

#: The classic heartbeat (each PING answered) unless a test asks for the quiet one.
CONFIG = SessionConfig(
    heartbeat_interval=1.0, resume_window=10.0, ack_every=4, ack_delay=0.05, window_messages=4, quiet_heartbeat=False
)
QUIET = dataclasses.replace(CONFIG, quiet_heartbeat=True)


def open_pair(config: SessionConfig = CONFIG) -> EnginePair:
    pair = EnginePair(config)
    pair.connect()
    pair.deliver_to_server(10_000)
    pair.deliver_to_client(10_000)
    pair.deliver_to_server(10_000)  # the client's confirmation of the ACCEPT
    assert pair.client.state is S.OPEN and pair.server is not None and pair.server.state is S.OPEN
    return pair


def frames_in(data: bytes) -> list[f.Frame]:
    return f.FrameDecoder(1 << 20).feed(data)


def test_ping_is_due_after_a_quiet_heartbeat_interval_and_pong_measures_rtt() -> None:
    pair = open_pair()
    assert pair.client.next_deadline() == pytest.approx(pair.now + 1.0)
    pair.advance(0.99)
    assert not pair.to_server
    pair.advance(0.01)
    assert any(isinstance(x, f.Ping) for x in frames_in(bytes(pair.to_server)))
    pair.advance(0.25)  # the pong takes a quarter second to come back
    pair.deliver_to_server(10_000)
    pair.deliver_to_client(10_000)
    assert pair.client.counters.last_rtt == pytest.approx(0.25)


def test_an_idle_session_costs_one_ping_and_one_pong_per_interval() -> None:
    """The client pings; the server, hearing its PINGs, only answers them.
    When the client's PINGs stop arriving, the server pings on its own."""
    pair = open_pair()
    pings = {"client": 0, "server": 0}
    for _ in range(200):  # 20 heartbeat intervals, the link delivering at once
        pair.advance(0.1)
        pings["client"] += sum(isinstance(x, f.Ping) for x in frames_in(bytes(pair.to_server)))
        pings["server"] += sum(isinstance(x, f.Ping) for x in frames_in(bytes(pair.to_client)))
        pair.deliver_to_server(10_000)
        pair.deliver_to_client(10_000)
    assert 17 <= pings["client"] <= 21 and pings["server"] == 0  # one per interval (0.1 s ticks)
    assert pair.server is not None and pair.server.state is S.OPEN and pair.client.state is S.OPEN
    # The client's PINGs stop reaching the server (its bytes are held back):
    # the server pings again within 1.5 intervals of the last PING it heard.
    pair.to_server.clear()
    server_pinged = 0.0
    for step in range(1, 30):
        pair.advance(0.1)
        pair.to_server.clear()
        if any(isinstance(x, f.Ping) for x in frames_in(bytes(pair.to_client))):
            server_pinged = step * 0.1
            break
    assert 0 < server_pinged <= 1.5 + 0.1


def test_the_quiet_heartbeat_halves_an_idle_sessions_frames_and_keeps_the_verdict() -> None:
    """protocol.md 6.1: with QUIET agreed the client PINGs after dead_after
    minus one interval of silence (2 s here) instead of one interval, the
    server answers each and does not PING itself; a cut is still found by
    both sides within dead_after (3 s)."""
    pair = open_pair(QUIET)
    assert pair.server is not None and pair.client.quiet_heartbeat and pair.server.quiet_heartbeat
    frames = {"PING client": 0, "PONG server": 0, "other": 0}
    for _ in range(200):  # 20 heartbeat intervals, the link delivering at once
        pair.advance(0.1)
        sides = (("client", pair.to_server, pair.deliver_to_server), ("server", pair.to_client, pair.deliver_to_client))
        for side, data, deliver in sides:
            for frame in frames_in(bytes(data)):
                name = f"{type(frame).__name__.upper()} {side}"
                frames[name if name in frames else "other"] += 1
            deliver(10_000)
    assert 9 <= frames["PING client"] <= 11 and frames["PONG server"] == frames["PING client"]  # classic: ~20 each
    assert frames["other"] == 0 and pair.server.state is S.OPEN and pair.client.state is S.OPEN
    cut_at = pair.now
    while pair.client.state is S.OPEN or pair.server.state is S.OPEN:  # nothing gets through any more
        pair.advance(0.1)
        pair.to_server.clear()
        pair.to_client.clear()
        assert pair.now - cut_at <= 3.0 + 0.1
    assert pair.client.state is S.DETACHED and pair.server.state is S.DETACHED


def test_a_server_may_decline_the_quiet_heartbeat_and_an_unasked_agreement_is_a_violation() -> None:
    pair = open_pair_with(QUIET, server_config=CONFIG)
    assert pair.server is not None and not pair.client.quiet_heartbeat and not pair.server.quiet_heartbeat
    pair.advance(1.0)
    pair.deliver_to_server(10_000)
    assert any(isinstance(x, f.Pong) for x in frames_in(bytes(pair.to_client)))  # the classic rules

    pair = EnginePair(CONFIG)
    pair.connect()
    pair.client.data_to_send(pair.now)
    pair.client.receive_data(f.encode(f.Accept(False, bytes(range(16)), bytes(16), 1, None, True)), pair.now)
    assert pair.client.state is S.FAILED


def test_a_protocol_error_answering_a_quiet_hello_is_retried_once_without_the_flag() -> None:
    """protocol.md 6.1: a first-edition server refuses flag 0x08 as unknown
    with PROTOCOL_ERROR; the client asks again without it, on a new
    connection, and never again in the session."""
    pair = EnginePair(QUIET)
    pair.connect()
    (hello,) = frames_in(bytes(pair.to_server))
    assert isinstance(hello, f.Hello) and hello.quiet
    pair.client.receive_data(f.encode(f.Reject(f.RejectReason.PROTOCOL_ERROR, "HELLO: unknown flags 0x08")), pair.now)
    assert pair.client.state is S.IDLE  # an attempt refused, not the session
    pair.client.transport_lost(pair.now)
    pair.client.connection_made(pair.now)
    (again,) = frames_in(pair.client.data_to_send(pair.now))
    assert isinstance(again, f.Hello) and not again.quiet
    pair.client.receive_data(f.encode(f.Reject(f.RejectReason.PROTOCOL_ERROR, "something else")), pair.now)
    assert pair.client.state is S.LOST  # without the flag, PROTOCOL_ERROR is final as ever


def open_pair_with(config: SessionConfig, *, server_config: SessionConfig) -> EnginePair:
    pair = EnginePair(config, server_config=server_config)
    pair.connect()
    pair.deliver_to_server(10_000)
    pair.deliver_to_client(10_000)
    pair.deliver_to_server(10_000)
    assert pair.client.state is S.OPEN and pair.server is not None and pair.server.state is S.OPEN
    return pair


def test_peer_declared_dead_after_dead_after_of_silence_and_session_survives() -> None:
    pair = open_pair()
    client = pair.client
    client.handle_timer(pair.now + 2.99)
    assert client.state is S.OPEN
    client.handle_timer(pair.now + 3.0)
    assert client.state is S.DETACHED
    events = client.events_received()
    assert any(isinstance(e, ev.TransportFailed) and "unresponsive" in e.reason for e in events)
    assert client.counters.last_detection_time == pytest.approx(3.0)


def test_any_byte_received_counts_as_life() -> None:
    pair = open_pair()
    data = f.encode_data(1, 0, [b"x" * 100])
    pair.client.receive_data(data[:5], pair.now + 2.5)
    pair.client.handle_timer(pair.now + 5.0)
    assert pair.client.state is S.OPEN  # 2.5 s since the last byte, not 5


def test_acks_are_coalesced_by_count_and_by_delay() -> None:
    pair = open_pair()
    for i in range(3):
        pair.send("client", b"m%d" % i)
    pair.deliver_to_server(10_000)
    assert not pair.to_client  # three messages, ack_every is four: wait
    pair.advance(0.05)
    assert [x for x in frames_in(bytes(pair.to_client)) if isinstance(x, f.Ack)] == [f.Ack(3)]
    pair.deliver_to_client(10_000)
    for i in range(4):
        pair.send("client", b"n%d" % i)
    pair.deliver_to_server(10_000)
    assert [x for x in frames_in(bytes(pair.to_client)) if isinstance(x, f.Ack)] == [f.Ack(7)]


def test_data_carries_the_ack_so_no_separate_ack_is_sent() -> None:
    pair = open_pair()
    pair.send("client", b"question")
    pair.deliver_to_server(10_000)
    pair.send("server", b"answer")
    sent = frames_in(bytes(pair.to_client))
    assert sent == [f.Data(1, 1, (b"answer",))]


def test_window_full_and_message_too_large() -> None:
    pair = open_pair()
    for _ in range(4):
        pair.client.send_message(b"x", pair.now)
    assert not pair.client.can_send(1)
    with pytest.raises(WindowFull):
        pair.client.send_message(b"x", pair.now)
    with pytest.raises(MessageTooLarge):
        pair.client.send_message(b"x" * (CONFIG.max_message_size + 1), pair.now)


def test_window_byte_bound() -> None:
    config = SessionConfig(window_bytes=100, max_message_size=60)
    engine = SessionEngine(config, client=True)
    engine.send_message(b"a" * 60, 0.0)
    assert engine.can_send(40) and not engine.can_send(41)


def test_resume_replays_what_the_peer_lacks_and_rotates_the_secret() -> None:
    pair = open_pair()
    old_secret = pair.client.secret
    for i in range(3):
        pair.send("client", b"m%d" % i)
    pair.deliver_to_server(f.DATA_OVERHEAD + 4 + 2)  # only the first message arrives
    pair.cut()
    pair.connect()
    pair.deliver_to_server(10_000)
    pair.deliver_to_client(10_000)
    pair.deliver_to_server(10_000)
    assert pair.records["server"].delivered == [b"m0", b"m1", b"m2"]
    assert pair.client.retransmitted == 2  # the server had m0: only m1 and m2 go again
    assert pair.client.secret != old_secret
    assert pair.client.counters.resumes == 1


def test_resume_with_a_wrong_secret_or_unknown_id_is_rejected_alike() -> None:
    pair = open_pair()
    registry = pair.registry
    good = pair.client
    wrong_secret = f.Hello(True, good.session_id, bytes(16), 1)
    unknown = f.Hello(True, b"\x01" * 16, good.secret, 1)
    answers = []
    for hello in (wrong_secret, unknown):
        with pytest.raises(HandshakeRejected) as info:
            registry.handshake(hello, pair.now)
        answers.append(reject_reply(info.value))
    assert answers[0] == answers[1] == f.encode(f.Reject(f.RejectReason.SESSION_UNKNOWN, "no such session"))


def test_previous_secret_works_until_the_client_proves_it_has_the_new_one() -> None:
    pair = open_pair()
    pair.cut()
    presented = pair.client.secret
    pair.connect()
    pair.deliver_to_server(10_000)  # the server rotates the secret ...
    pair.cut()  # ... but the ACCEPT never reaches the client
    assert pair.client.secret == presented
    pair.connect()
    pair.deliver_to_server(10_000)
    pair.deliver_to_client(10_000)
    assert pair.client.state is S.OPEN and pair.client.counters.resumes == 1
    # Once the client has spoken on the new connection, the old secret is dead.
    pair.send("client", b"hello")
    pair.deliver_to_server(10_000)
    assert not pair.server.secret_matches(presented)
    assert pair.server.secret_matches(pair.client.secret)


def test_impossible_resume_claim_ends_both_sides_with_their_unacked_messages() -> None:
    pair = open_pair()
    pair.send("server", b"s1")
    pair.cut()
    # A client that claims it expects message 7 (never sent).
    hello = f.Hello(True, pair.client.session_id, pair.client.secret, 7)
    with pytest.raises(HandshakeRejected) as info:
        pair.registry.handshake(hello, pair.now)
    assert info.value.reason is f.RejectReason.BAD_SEQUENCE
    assert pair.server.state is S.FAILED
    (lost,) = [e for e in pair.server.events_received() if isinstance(e, ev.SessionFailed)]
    assert lost.unacked == ((1, b"s1"),)
    assert pair.registry.get(pair.client.session_id) is None


def test_reject_ends_the_client_session_with_its_unacked_messages() -> None:
    pair = open_pair()
    pair.send("client", b"a")
    pair.send("client", b"b")
    pair.cut()
    pair.reap(pair.now + CONFIG.resume_window)  # the server forgets the session
    assert pair.server.state is S.LOST
    pair.connect()
    pair.deliver_to_server(10_000)
    pair.deliver_to_client(10_000)
    assert pair.client.state is S.LOST
    ended = pair.records["client"].ended
    assert isinstance(ended, ev.SessionFailed) and ended.unacked == ((1, b"a"), (2, b"b"))
    assert "SESSION_UNKNOWN" in ended.reason
    with pytest.raises(ChannelBroken):
        pair.client.send_message(b"c", pair.now)


def test_resume_window_expiry_on_the_client_reports_unacked() -> None:
    pair = open_pair()
    pair.send("client", b"a")
    pair.cut()
    pair.client.handle_timer(pair.now + CONFIG.resume_window - 0.01)
    assert pair.client.state is S.DETACHED
    pair.client.handle_timer(pair.now + CONFIG.resume_window)
    assert pair.client.state is S.LOST
    (lost,) = [e for e in pair.client.events_received() if isinstance(e, ev.SessionFailed)]
    assert lost.unacked == ((1, b"a"),)


def test_graceful_close_delivers_in_flight_data_then_ends_both_sides() -> None:
    pair = open_pair()
    for i in range(3):
        pair.send("client", b"m%d" % i)
    pair.client.close(pair.now)
    pair.step()
    assert pair.client.state is S.CLOSING
    with pytest.raises(ChannelClosed):
        pair.client.send_message(b"late", pair.now)
    pair.deliver_to_server(10_000)  # the messages and CLOSE
    assert pair.records["server"].delivered == [b"m0", b"m1", b"m2"]
    assert pair.records["server"].peer_closed and pair.server.state is S.PEER_CLOSED
    pair.deliver_to_client(10_000)  # CLOSE_ACK and the server's own CLOSE
    assert pair.records["client"].peer_closed and pair.client.state is S.CLOSED
    pair.deliver_to_server(10_000)  # the CLOSE_ACK of the server's CLOSE
    assert pair.server.state is S.CLOSED
    assert pair.records["client"].ended == ev.SessionClosed(False, ())
    assert pair.records["server"].ended == ev.SessionClosed(True, ())


def test_close_delivers_and_acknowledges_what_was_in_flight_toward_the_closer() -> None:
    pair = open_pair()
    pair.send("server", b"on its way")
    pair.client.close(pair.now)  # before the server's message arrives
    pair.step()
    pair.send("server", b"queued before the CLOSE arrived")
    pair.deliver_to_server(10_000)
    with pytest.raises(ChannelClosed):  # the CLOSE arrived: nothing more is taken
        pair.server.send_message(b"too late", pair.now)
    pair.deliver_to_client(10_000)
    pair.deliver_to_server(10_000)
    assert pair.records["client"].delivered == [b"on its way", b"queued before the CLOSE arrived"]
    # Delivered, so acknowledged: the server reports nothing it could resend as a duplicate.
    assert pair.records["server"].ended == ev.SessionClosed(True, ())
    assert pair.records["client"].ended == ev.SessionClosed(False, ())


def test_close_acknowledges_what_the_closer_received() -> None:
    pair = open_pair()
    pair.send("server", b"reply")
    pair.deliver_to_client(10_000)  # delivered; its ack is still delayed
    pair.client.close(pair.now)
    pair.step()
    pair.deliver_to_server(10_000)
    pair.deliver_to_client(10_000)
    pair.deliver_to_server(10_000)
    assert pair.records["server"].ended == ev.SessionClosed(True, ())
    assert pair.records["client"].ended == ev.SessionClosed(False, ())


def test_simultaneous_close() -> None:
    pair = open_pair()
    pair.client.close(pair.now)
    pair.server.close(pair.now)
    pair.step()
    pair.deliver_to_server(10_000)
    pair.deliver_to_client(10_000)
    pair.deliver_to_server(10_000)
    assert pair.client.state is S.CLOSED and pair.server.state is S.CLOSED


def test_close_while_detached_reports_unacked() -> None:
    pair = open_pair()
    pair.send("client", b"a")
    pair.cut()
    pair.client.close(pair.now)
    pair.step()
    assert pair.records["client"].ended == ev.SessionClosed(False, ((1, b"a"),))


def test_corrupt_stream_drops_the_connection_but_keeps_the_session() -> None:
    pair = open_pair()
    pair.send("server", b"x")
    wire = bytearray(pair.to_client)
    wire[-1] ^= 0xFF
    pair.to_client[:] = wire
    pair.deliver_to_client(10_000)
    assert pair.client.state is S.DETACHED
    assert pair.records["client"].transport_failures == 1
    pair.connect()
    pair.deliver_to_server(10_000)
    pair.deliver_to_client(10_000)
    assert pair.records["client"].delivered == [b"x"]


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (f.Ack(5), "never sent"),
        (f.Data(3, 0, (b"gap",)), "gap"),
        (f.Accept(False, bytes(range(16)), bytes(16), 1), "ACCEPT"),
        (f.Hello(False, bytes(16), bytes(16), 1), "HELLO"),
        (f.Close(9), "CLOSE after message 9"),
    ],
)
def test_protocol_violations_fail_the_session_and_tell_the_peer(frame: f.Frame, match: str) -> None:
    pair = open_pair()
    pair.send("client", b"pending")
    pair.client.receive_data(f.encode(frame), pair.now)
    assert pair.client.state is S.FAILED
    (lost,) = [e for e in pair.client.events_received() if isinstance(e, ev.SessionFailed)]
    assert isinstance(lost.error, ProtocolError) and match in str(lost.error)
    assert lost.unacked == ((1, b"pending"),)
    (reject,) = frames_in(pair.client.data_to_send())
    assert isinstance(reject, f.Reject) and reject.reason is f.RejectReason.PROTOCOL_ERROR


def test_duplicates_are_dropped_and_counted() -> None:
    pair = open_pair()
    pair.client.receive_data(f.encode_data(1, 0, [b"a", b"b"]), pair.now)
    pair.client.receive_data(f.encode_data(1, 0, [b"a", b"b", b"c"]), pair.now)
    received = [e for e in pair.client.events_received() if isinstance(e, ev.MessagesReceived)]
    assert received == [ev.MessagesReceived(1, (b"a", b"b"), 2), ev.MessagesReceived(3, (b"c",), 1)]
    assert pair.client.duplicates_dropped == 2


def test_handshake_reader_accepts_only_a_lone_hello() -> None:
    hello = f.Hello(False, bytes(16), bytes(16), 1)
    reader = HandshakeReader()
    wire = f.encode(hello)
    assert reader.receive_data(wire[:10]) is None
    assert reader.receive_data(wire[10:]) == hello
    with pytest.raises(ProtocolError, match="first frame"):
        HandshakeReader().receive_data(f.encode(f.Ping(1)))
    with pytest.raises(ProtocolError, match="before the handshake"):
        HandshakeReader().receive_data(wire + f.encode(f.Ping(1)))
    with pytest.raises(FrameError):
        HandshakeReader().receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(FrameError):
        HandshakeReader().receive_data(b"RT\x01\x04\x7f\xff\xff\xff")  # 2 GiB first frame


def test_registry_caps_sessions_and_an_ended_one_makes_room() -> None:
    registry = SessionRegistry(CONFIG, max_sessions=2)
    hello = f.Hello(False, bytes(16), bytes(16), 1)
    first = registry.handshake(hello, 0.0).engine
    registry.handshake(hello, 0.0)
    with pytest.raises(HandshakeRejected) as info:
        registry.handshake(hello, 0.0)
    assert info.value.reason is f.RejectReason.SERVER_BUSY
    first.transport_lost(0.0)
    assert first.next_deadline() == CONFIG.resume_window
    # Once the first session's resume window is over and it is forgotten, there is room again.
    first.handle_timer(CONFIG.resume_window)
    assert first.state is S.LOST
    registry.remove(first)
    assert registry.handshake(hello, CONFIG.resume_window).is_new
    assert registry.get(first.session_id) is None


def test_a_first_handshake_that_times_out_loses_nothing_and_can_be_tried_again() -> None:
    pair = EnginePair(CONFIG)
    pair.connect()
    pair.client.handle_timer(pair.now + CONFIG.handshake_timeout)
    # No session existed yet: back to idle, no resume window, nothing lost.
    assert pair.client.state is S.IDLE and pair.client.next_deadline() is None
    assert [type(e) for e in pair.client.events_received()] == [ev.TransportFailed]
    pair.cut()
    pair.connect()
    pair.deliver_to_server(10_000)
    pair.deliver_to_client(10_000)
    assert pair.client.state is S.OPEN


def test_a_resume_handshake_that_times_out_detaches_and_keeps_the_resume_window() -> None:
    config = SessionConfig(heartbeat_interval=1.0, resume_window=10.0, handshake_timeout=2.0)
    pair = open_pair(config)
    pair.cut()
    detached_at = pair.now
    pair.connect()
    pair.client.handle_timer(pair.now + config.handshake_timeout)
    assert pair.client.state is S.DETACHED
    assert pair.client.next_deadline() == detached_at + config.resume_window


@pytest.mark.parametrize("reason", [f.RejectReason.SERVER_BUSY, f.RejectReason.HANDSHAKE_TIMEOUT])
def test_busy_or_timeout_refusals_of_a_first_handshake_are_retried(reason: f.RejectReason) -> None:
    pair = EnginePair(CONFIG)
    pair.connect()
    pair.client.receive_data(f.encode(f.Reject(reason, "later")), pair.now)
    assert pair.client.state is S.IDLE
    (failed,) = pair.client.events_received()
    assert isinstance(failed, ev.TransportFailed) and reason.name in failed.reason


@pytest.mark.parametrize("reason", [f.RejectReason.AUTH_FAILED, f.RejectReason.PROTOCOL_ERROR, f.RejectReason.UNSUPPORTED_VERSION])
def test_final_refusals_of_a_first_handshake_end_it_with_the_code(reason: f.RejectReason) -> None:
    pair = EnginePair(CONFIG)
    pair.connect()
    pair.client.receive_data(f.encode(f.Reject(reason, "no")), pair.now)
    assert pair.client.state is S.LOST
    (lost,) = pair.client.events_received()
    assert isinstance(lost, ev.SessionFailed) and lost.unacked == ()
    assert isinstance(lost.error, RejectedByPeer) and lost.error.reason is reason


def test_pings_beyond_the_cap_on_frames_that_carry_nothing_new_get_no_pong() -> None:
    """Issue 25, item 10: section 6 says to answer PINGs, section 5.3 caps
    what a side sends that carries nothing new at 1,000 per second (burst
    1,000). One rule: a side answers PINGs up to that cap, so a peer that
    floods 5,000 PINGs (under the receive threshold) gets 1,000 PONGs."""
    pair = open_pair(CONFIG)
    pair.client.data_to_send(pair.now)
    flood = b"".join(f.encode(f.Ping(n)) for n in range(5_000))
    pair.server.receive_data(flood, pair.now)
    assert pair.server.state is S.OPEN  # 5,000 is under the receive threshold: not a violation
    pongs = [frame for frame in frames_in(pair.server.data_to_send(pair.now)) if isinstance(frame, f.Pong)]
    assert len(pongs) == PONGS_PER_SECOND == 1_000
    assert [pong.token for pong in pongs] == list(range(1_000))
    pair.now += 1.0  # a second later the budget is back: a PING in a legal cadence is answered
    pair.server.receive_data(f.encode(f.Ping(77)), pair.now)
    assert [frame.token for frame in frames_in(pair.server.data_to_send(pair.now)) if isinstance(frame, f.Pong)] == [77]


def test_not_here_ends_a_first_handshake_but_only_delays_a_resume() -> None:
    """Issue 25, item 10: NOT_HERE names the node of an existing session. A
    resume retries it within the resume window (4.6); answering a new
    session's HELLO it ends the attempt like any other code (4.5, section 8)."""
    pair = EnginePair(CONFIG)
    pair.connect()
    pair.client.receive_data(f.encode(f.Reject(f.RejectReason.NOT_HERE, "session of node 1; this is node 2")), pair.now)
    assert pair.client.state is S.LOST
    (lost,) = pair.client.events_received()
    assert isinstance(lost, ev.SessionFailed) and isinstance(lost.error, RejectedByPeer)
    assert lost.error.reason is f.RejectReason.NOT_HERE

    pair = open_pair(CONFIG)
    pair.cut()
    pair.connect()
    assert pair.client.state is S.RESUMING
    pair.client.receive_data(f.encode(f.Reject(f.RejectReason.NOT_HERE, "session of node 1; this is node 2")), pair.now)
    assert pair.client.state is S.DETACHED


def test_send_messages_queues_what_fits_and_refuses_oversized_batches_whole() -> None:
    config = SessionConfig(window_messages=5, window_bytes=10, max_message_size=8)
    engine = SessionEngine(config, client=True)
    assert engine.send_messages([b"aaa", b"bbb", b"ccc", b"ddd"], 0.0) == (1, 3)  # 9 bytes fit, 12 do not
    assert engine.send_messages([b"d"], 0.0) == (4, 1)
    assert engine.send_messages([b"e"], 0.0) == (5, 0)  # 10 bytes held: full
    with pytest.raises(MessageTooLarge):
        engine.send_messages([b"x", b"y" * 9], 0.0)
    assert engine.unacked_count == 4 and engine.counters.messages_sent == 4


def test_an_empty_window_always_takes_one_message() -> None:
    config = SessionConfig(window_messages=5, window_bytes=16, max_message_size=16)
    engine = SessionEngine(config, client=True)
    assert engine.send_messages([b"x" * 16, b"y"], 0.0) == (1, 1)


def test_frame_flood_fails_the_session() -> None:
    pair = open_pair(SessionConfig(heartbeat_interval=1.0, max_control_frames_per_second=100))
    pair.client.receive_data(f.encode(f.Ping(1)) * 95, pair.now)  # within a second's burst
    assert pair.client.state is S.OPEN
    pair.client.receive_data(f.encode(f.Ping(1)) * 60, pair.now + 0.5)  # 50 more tokens, 60 frames
    assert pair.client.state is S.FAILED


def test_ack_on_commit_acknowledges_only_what_the_application_committed() -> None:
    config = SessionConfig(heartbeat_interval=1.0, ack_on_commit=True, ack_delay=0.0)
    pair = open_pair(config)
    for i in range(3):
        pair.send("client", b"m%d" % i)
    pair.deliver_to_server(10_000)
    pair.deliver_to_client(10_000)
    assert pair.client.unacked_count == 3  # delivered, not committed: nothing acknowledged
    pair.commit("server", 2)
    pair.deliver_to_client(10_000)
    assert pair.client.unacked_count == 1 and pair.records["client"].acked == 2
    with pytest.raises(UsageError):
        pair.server.commit(9, pair.now)


def test_a_restored_client_resumes_and_gets_what_it_had_not_committed() -> None:
    config = SessionConfig(heartbeat_interval=1.0, ack_on_commit=True, ack_delay=0.0)
    pair = open_pair(config)
    for i in range(4):
        pair.send("server", b"s%d" % i)
    pair.send("client", b"c0")
    pair.deliver_to_client(10_000)
    pair.commit("client", 2)  # the client processed s0 and s1, then crashes
    pair.crash_client()
    assert pair.client.state is S.DETACHED and pair.records["client"].delivered == [b"s0", b"s1"]
    pair.settle()
    assert pair.records["client"].delivered == [b"s0", b"s1", b"s2", b"s3"]
    assert pair.records["server"].delivered == [b"c0"]
    assert pair.client.counters.resumes == 1


# ------------------------------------------------------------------ limits


_LIMITS = st.one_of(st.sampled_from([1, 100, 65_536, 262_144, 1 << 20]), st.integers(1, 600_000))
_TARGETS = st.one_of(st.sampled_from([1, 65_536, 262_144, 400_000]), st.integers(1, 400_000))


@settings(max_examples=200 if settings().max_examples >= 1000 else 50)
@example(65_536, 65_536, 262_144, 262_144, [0], 10_000, 32)  # the livelock the issue reproduced
@example(1 << 20, 65_536, 262_144, 262_144, [1 << 20], 1, 1)  # peers configured differently
@given(
    client_limit=_LIMITS,
    server_limit=_LIMITS,
    client_target=_TARGETS,
    server_target=_TARGETS,
    sizes=st.lists(st.integers(0, 600_000), min_size=1, max_size=40),
    tiny_count=st.integers(1, 12_000),
    tiny_size=st.integers(0, 64),
)
def test_every_frame_fits_the_receivers_limit_whatever_either_side_is_configured(
    client_limit: int,
    server_limit: int,
    client_target: int,
    server_target: int,
    sizes: list[int],
    tiny_count: int,
    tiny_size: int,
) -> None:
    def config(limit: int, target: int) -> SessionConfig:
        return SessionConfig(max_message_size=limit, data_frame_target=target, window_bytes=max(limit, 1 << 22))

    pair = EnginePair(config(client_limit, client_target), server_config=config(server_limit, server_target))
    pair.connect()
    pair.deliver_to_server(1 << 20)
    pair.deliver_to_client(1 << 20)
    pair.deliver_to_server(1 << 20)
    assert pair.client.state is S.OPEN and pair.server is not None and pair.server.state is S.OPEN
    sendable = min(client_limit, server_limit)
    assert pair.client.max_sendable_size == sendable == pair.server.max_sendable_size
    # Many tiny messages (the case that outgrew the limit by its length prefixes) and some big ones.
    payloads = [b"t" * min(tiny_size, sendable)] * tiny_count + [b"b" * min(size, sendable) for size in sizes]
    for side in ("client", "server"):
        queued = 0
        while queued < len(payloads):
            queued += pair.send_batch(side, payloads[queued:])
            pair.deliver_to_server(1 << 30)  # the sniffer decodes with the receiver's limit
            pair.deliver_to_client(1 << 30)
            pair.advance(pair.config.ack_delay)
    pair.settle()
    assert pair.records["server"].delivered == pair.records["client"].sent
    assert pair.records["client"].delivered == pair.records["server"].sent
    assert pair.client.state is S.OPEN and pair.server.state is S.OPEN
    with pytest.raises(MessageTooLarge):
        pair.client.send_message(b"x" * (sendable + 1), pair.now)


def test_limits_are_announced_only_when_they_differ_from_the_default() -> None:
    default = EnginePair(SessionConfig())
    default.connect()
    (hello,) = frames_in(bytes(default.to_server))
    assert isinstance(hello, f.Hello) and hello.max_message is None
    small = EnginePair(SessionConfig(max_message_size=1000, window_bytes=1000))
    small.connect()
    (hello,) = frames_in(bytes(small.to_server))
    assert isinstance(hello, f.Hello) and hello.max_message == 1000
    small.deliver_to_server(10_000)
    assert small.server is not None and small.server.max_sendable_size == 1000


def test_a_frame_over_the_limit_fails_the_session_instead_of_resuming() -> None:
    pair = open_pair()
    pair.send("client", b"pending")
    too_big = pair.client.config.max_frame_size + 1
    header = f.MAGIC + bytes([f.PROTOCOL_VERSION, f.FrameType.DATA]) + too_big.to_bytes(4, "big")
    pair.client.receive_data(header + bytes(4), pair.now)
    assert pair.client.state is S.FAILED
    (lost,) = [e for e in pair.client.events_received() if isinstance(e, ev.SessionFailed)]
    assert isinstance(lost.error, f.FrameTooLarge) and lost.unacked == ((1, b"pending"),)
    (reject,) = frames_in(pair.client.data_to_send())
    assert isinstance(reject, f.Reject) and reject.reason is f.RejectReason.PROTOCOL_ERROR


def test_a_message_over_the_receivers_limit_is_a_protocol_error() -> None:
    config = SessionConfig(max_message_size=100, window_bytes=1000)
    pair = open_pair(config)
    pair.client.receive_data(f.encode_data(1, 0, [b"x" * 101]), pair.now)
    assert pair.client.state is S.FAILED
    (lost,) = [e for e in pair.client.events_received() if isinstance(e, ev.SessionFailed)]
    assert "max_message_size" in str(lost.error)


def test_a_peer_that_acks_every_message_is_never_cut_off() -> None:
    pair = open_pair(SessionConfig(window_messages=100_000, window_bytes=1 << 30, max_control_frames_per_second=100))
    for i in range(5000):  # one ACK per message, all at the same instant: 50 times the cap
        pair.client.send_message(b"m", pair.now)
        pair.client.data_to_send(pair.now)
        pair.client.receive_data(f.encode(f.Ack(i + 1)), pair.now)
    assert pair.client.state is S.OPEN and pair.client.unacked_count == 0


def test_frames_that_carry_nothing_new_are_capped() -> None:
    pair = open_pair(SessionConfig(max_control_frames_per_second=100))
    flood = f.encode(f.Ping(1)) * 60 + f.encode(f.Ack(0)) * 41  # 101 frames, nothing new in any
    pair.client.receive_data(flood, pair.now)
    assert pair.client.state is S.FAILED
    (lost,) = [e for e in pair.client.events_received() if isinstance(e, ev.SessionFailed)]
    assert "carry nothing new" in str(lost.error)


def test_abort_tells_the_peer_which_ends_at_once_with_its_unacked_messages() -> None:
    pair = open_pair()
    pair.send("server", b"for the client")
    pair.client.abort(pair.now)
    pair.step()
    assert pair.client.state is S.CLOSED
    assert pair.records["client"].ended == ev.SessionClosed(False, (), aborted=True)
    pair.deliver_to_server(10_000)
    assert pair.server.state is S.LOST
    lost = pair.records["server"].ended
    assert isinstance(lost, ev.SessionFailed) and "aborted by the peer" in lost.reason
    assert lost.unacked == ((1, b"for the client"),)


def test_a_new_session_whose_confirmation_was_lost_is_confirmed_by_its_resume() -> None:
    pair = EnginePair(CONFIG)
    pair.connect()
    pair.deliver_to_server(10_000)
    pair.deliver_to_client(10_000)  # the client holds the session; its confirming ACK is lost
    pair.cut()
    assert not any(isinstance(e, ev.PeerConfirmed) for e in pair.server.events_received())
    pair.connect()
    pair.deliver_to_server(10_000)  # the resume HELLO: not a confirmation yet
    assert not any(isinstance(e, ev.PeerConfirmed) for e in pair.server.events_received())
    pair.deliver_to_client(10_000)
    pair.server_events: list[ev.Event] = []
    pair.server.receive_data(pair.to_server, pair.now)  # the client's first frame after this ACCEPT
    assert any(isinstance(e, ev.PeerConfirmed) for e in pair.server.events_received())


def test_a_new_session_hello_must_be_blank() -> None:
    registry = SessionRegistry(CONFIG)
    for hello in (f.Hello(False, bytes(range(16)), bytes(16), 1), f.Hello(False, bytes(16), bytes(16), 7)):
        with pytest.raises(HandshakeRejected) as info:
            registry.handshake(hello, 0.0)
        assert info.value.reason is f.RejectReason.PROTOCOL_ERROR


def test_a_keyless_server_refuses_a_hello_that_asks_for_the_key_exchange() -> None:
    from reliable_tcp.core.handshake import ServerHandshake

    with pytest.raises(HandshakeRejected) as info:
        ServerHandshake(None).receive_data(f.encode(f.Hello(False, bytes(16), bytes(16), 1, bytes(16))))
    assert info.value.reason is f.RejectReason.AUTH_FAILED
