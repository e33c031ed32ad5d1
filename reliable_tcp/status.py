"""What channels and listeners report: their state, state-change events and statistics."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .state import CLOSING_STATES, SessionState

__all__ = ["ChannelState", "ChannelEvent", "ChannelStatistics", "ListenerStatistics", "channel_state_of"]


class ChannelState(enum.Enum):
    """What a channel is doing, as the application sees it."""

    CONNECTING = "connecting"  # first handshake not done yet
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # link lost; waiting to resume
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"  # session lost or protocol error


def channel_state_of(state: SessionState, ever_connected: bool) -> ChannelState:
    """The channel state that a session state shows the application."""
    if state is SessionState.OPEN:
        return ChannelState.CONNECTED
    if state in CLOSING_STATES:
        return ChannelState.CLOSING
    if state is SessionState.CLOSED:
        return ChannelState.CLOSED
    if state in (SessionState.LOST, SessionState.FAILED):
        return ChannelState.FAILED
    return ChannelState.DISCONNECTED if ever_connected else ChannelState.CONNECTING


@dataclass(frozen=True, slots=True)
class ChannelEvent:
    """A state change reported to ``on_event``: ``kind`` is one of
    ``connected``, ``disconnected``, ``resumed``, ``closed``, ``failed``.

    ``detail`` says why (the cause of a disconnect, the reason of a failure);
    ``replayed`` counts the messages sent again after a resume.
    """

    kind: str
    state: ChannelState
    detail: str = ""
    replayed: int = 0


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """A snapshot of a channel's counters and timings (seconds)."""

    state: ChannelState
    messages_sent: int
    bytes_sent: int
    messages_received: int
    bytes_received: int
    retransmitted: int
    duplicates_dropped: int
    connections: int
    disconnects: int
    resumes: int
    unacked_messages: int
    unacked_bytes: int
    queued_messages: int
    last_rtt: float | None
    last_detection_time: float | None
    last_recovery_time: float | None


@dataclass(frozen=True, slots=True)
class ListenerStatistics:
    """A snapshot of a listener's counters."""

    sessions: int  # registered: connected or waiting to resume
    pending_handshakes: int
    rejected_handshakes: int  # refused before any session: limits, bad input, timeouts, wrong key
    sessions_failed: int  # ended by a protocol violation or a lost resume
