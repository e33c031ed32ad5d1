"""The relay's verdict on a lost session whose far end missed only this
side's end of stream (tunnel._Relay._lost): delivered, unless the far end
aborted. An abort is the far end's own failure (its output closed, its
input broke), so what it acknowledged need not have reached its endpoint.
The race behind it: rtcat whose stdout is closed acknowledges the data,
fails to write it and aborts; if the acknowledgement of the end marker had
not left yet, the listener took the abort for a clean end and exited 0."""

from __future__ import annotations

from typing import Any, cast

from reliable_tcp.cli import tunnel
from reliable_tcp.core.frames import RejectReason
from reliable_tcp.exceptions import RejectedByPeer, SessionLost


class Endpoint:
    name = "test endpoint"
    interactive = False

    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def lost_after_both_ends(reason: RejectReason) -> tuple[Any, Endpoint]:
    framing = tunnel.PlainFraming()
    endpoint = Endpoint()
    relay = tunnel._Relay(cast(Any, None), cast(Any, endpoint), closer=False, framing=framing, close_timeout=1.0)
    relay._eof_received = True  # the far end's stream had ended here
    error = SessionLost("the session ended", ((7, framing.end),))  # all it missed: our end of stream
    error.__cause__ = RejectedByPeer(reason, "")
    relay._lost(error)
    return relay, endpoint


def test_a_far_end_that_aborted_fails_the_stream_even_if_it_missed_only_our_end() -> None:
    relay, endpoint = lost_after_both_ends(RejectReason.ABORTED)
    assert relay.result.fault is tunnel.Fault.SESSION and relay.result.unacked
    assert "the session ended" in relay.result.reason
    assert endpoint.aborted


def test_a_far_end_that_closed_before_our_end_came_again_leaves_the_stream_whole() -> None:
    # A side restarted from its journal sends its end again; the far end had it and closed.
    relay, endpoint = lost_after_both_ends(RejectReason.SESSION_UNKNOWN)
    assert relay.result.fault is None and not relay._failed
    assert not endpoint.aborted
