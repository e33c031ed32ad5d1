"""Fuzzing the session engine: any frames or bytes, in any order, yield only
documented outcomes (state changes and events), never an exception, and the
windows keep their invariants."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from enginepair import EnginePair
from reliable_tcp.core import events as ev
from reliable_tcp.core import frames as f
from reliable_tcp.core.config import SessionConfig
from reliable_tcp.core.state import SessionState

from test_frames import any_frame

CONFIG = SessionConfig(heartbeat_interval=1.0, window_messages=8, window_bytes=256, max_message_size=64)
KNOWN_EVENTS = (
    ev.HandshakeCompleted, ev.PeerConfirmed, ev.MessagesReceived, ev.MessagesAcknowledged, ev.PongReceived,
    ev.TransportFailed, ev.PeerClosed, ev.SessionClosed, ev.SessionFailed,
)

small_frames = st.one_of(
    any_frame,
    st.builds(f.Data, st.integers(1, 12), st.integers(0, 12), st.lists(st.binary(max_size=8), min_size=1, max_size=4).map(tuple)),
    st.builds(f.Ack, st.integers(0, 12)),
    st.builds(f.Close, st.integers(0, 12)),
    st.builds(f.CloseAck, st.integers(0, 12)),
)
chunks = st.one_of(small_frames.map(f.encode), st.binary(max_size=40))


@given(side=st.sampled_from(["client", "server"]), inputs=st.lists(chunks, max_size=12), sends=st.integers(0, 6))
def test_any_input_gives_only_documented_outcomes(side: str, inputs: list[bytes], sends: int) -> None:
    pair = EnginePair(CONFIG)
    pair.connect()
    pair.deliver_to_server(10_000)
    pair.deliver_to_client(10_000)
    engine = pair.engine(side)
    assert engine is not None
    for i in range(sends):
        if engine.can_send(2):
            engine.send_message(b"%d" % i, pair.now)
    engine.data_to_send(pair.now)
    for data in inputs:
        engine.receive_data(data, pair.now)  # must not raise, whatever the bytes
        engine.data_to_send(pair.now)
        for event in engine.events_received():
            assert isinstance(event, KNOWN_EVENTS)
            if isinstance(event, ev.SessionFailed) and event.error is not None:
                assert isinstance(event.error, Exception)
        assert engine.state in SessionState
        assert 0 <= engine.unacked_count <= CONFIG.window_messages
        if engine.state is SessionState.DETACHED:
            break  # a corrupt stream: the shell would drop the connection here
    engine.handle_timer(pair.now + 100)
    engine.events_received()
