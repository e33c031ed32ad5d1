"""The quiet heartbeat (docs/protocol.md 6.1) over real sockets, on both
fronts: half the frames while idle, agreed only when both sides want it,
and a first-edition server's refusal of the flag costs one attempt."""

from __future__ import annotations

import time
from typing import Any

import pytest

from frame_relay import FrameRelay
from helpers import fast_options, wait_for

INTERVAL = 0.5  # dead_after: three intervals; the quiet ping period two (half a second of slack before a verdict)
IDLE = 4.0  # seconds of idleness counted: 8 intervals


@pytest.mark.parametrize(("client_quiet", "server_quiet"), [(True, True), (True, False), (False, True)])
def test_an_idle_session_pings_half_as_often_only_when_both_sides_want_it(
    front: Any, client_quiet: bool, server_quiet: bool
) -> None:
    options = fast_options(heartbeat_interval=INTERVAL, dead_after=None)
    server_options = {**options, "quiet_heartbeat": server_quiet}
    with front.listen(("127.0.0.1", 0), **server_options) as listener, FrameRelay(listener.address) as relay:
        client = front.connect(relay.address, **{**options, "quiet_heartbeat": client_quiet})
        server = listener.accept(timeout=10)
        try:
            client.send(b"hello")
            assert server.recv(timeout=10) == b"hello"
            before = {key: relay.count(*key) for key in (("to_server", "PING"), ("to_client", "PONG"), ("to_client", "PING"))}
            started = time.monotonic()
            time.sleep(IDLE)  # the idle time being measured, not a wait for a condition
            elapsed = time.monotonic() - started
            pings = relay.count("to_server", "PING") - before["to_server", "PING"]
            pongs = relay.count("to_client", "PONG") - before["to_client", "PONG"]
            server_pings = relay.count("to_client", "PING") - before["to_client", "PING"]
            intervals = elapsed / INTERVAL
            if client_quiet and server_quiet:  # one PING and one PONG per two intervals
                assert 0.3 * intervals <= pings <= 0.65 * intervals, (pings, intervals)
            else:  # one of each per interval
                assert pings >= 0.75 * intervals, (pings, intervals)
            assert abs(pongs - pings) <= 1 and server_pings == 0  # the server answers; it never needs to PING itself
            assert client.statistics().disconnects == 0 and server.statistics().disconnects == 0
            server.send(b"still there")
            assert client.recv(timeout=10) == b"still there"
            client.close(timeout=10)
            server.close(timeout=10)
        finally:
            client.abort()


def test_a_first_edition_servers_refusal_of_the_flag_costs_one_attempt(front: Any) -> None:
    options = fast_options()
    with front.listen(("127.0.0.1", 0), **options) as listener, FrameRelay(listener.address, refuse_quiet=True) as relay:
        client = front.connect(relay.address, **options)
        server = listener.accept(timeout=10)
        try:
            assert relay.refused == 1 and relay.relayed == 1  # asked once with QUIET, then without
            client.send(b"through")
            assert server.recv(timeout=10) == b"through"
            relay.cut()  # the connection breaks; the resume does not ask again
            wait_for(lambda: relay.relayed == 2, timeout=10)
            client.send(b"after the resume")
            assert server.recv(timeout=10) == b"after the resume"
            assert relay.refused == 1
            client.close(timeout=10)
            server.close(timeout=10)
        finally:
            client.abort()
