"""What channels and listeners report: their state, state-change events and statistics."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.state import CLOSING_STATES, SessionState

if TYPE_CHECKING:
    from ..core.engine import SessionEngine

__all__ = ["ChannelState", "EventKind", "ChannelEvent", "ChannelStatistics", "ListenerStatistics", "channel_state_of"]


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


class EventKind(enum.StrEnum):
    """What a :class:`ChannelEvent` reports (string-valued:
    ``EventKind.RESUMED == "resumed"``)."""

    CONNECTED = "connected"  # the first handshake is done
    DISCONNECTED = "disconnected"  # the connection was lost; the session waits for a resume
    RESUMED = "resumed"  # the session continues on a new connection
    CLOSED = "closed"  # the session ended in order (a close or an abort)
    FAILED = "failed"  # the session was lost or broke


@dataclass(frozen=True, slots=True)
class ChannelEvent:
    """A state change reported to ``on_event``: ``kind`` is one of
    ``connected``, ``disconnected``, ``resumed``, ``closed``, ``failed``.

    ``detail`` says why (the cause of a disconnect, the reason of a failure);
    ``replayed`` counts the messages sent again after a resume.
    """

    kind: EventKind
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
    #: Connection attempts that failed (refused, unreachable, a TLS
    #: handshake a captive portal garbled, ...), retried or not.
    failed_attempts: int = 0


def statistics_of(
    engine: SessionEngine,
    *,
    ever_connected: bool,
    disconnects: int,
    queued_messages: int,
    last_recovery_time: float | None,
    failed_attempts: int = 0,
) -> ChannelStatistics:
    """A channel's snapshot: the engine's counters and what only the shell
    knows (both front ends call this, each under its own rule of access)."""
    c = engine.counters
    return ChannelStatistics(
        state=channel_state_of(engine.state, ever_connected),
        messages_sent=c.messages_sent,
        bytes_sent=c.bytes_sent,
        messages_received=c.messages_received,
        bytes_received=c.bytes_received,
        retransmitted=engine.retransmitted,
        duplicates_dropped=engine.duplicates_dropped,
        connections=c.handshakes,
        disconnects=disconnects,
        resumes=c.resumes,
        unacked_messages=engine.unacked_count,
        unacked_bytes=engine.unacked_bytes,
        queued_messages=queued_messages,
        last_rtt=c.last_rtt,
        last_detection_time=c.last_detection_time,
        last_recovery_time=last_recovery_time,
        failed_attempts=failed_attempts,
    )


@dataclass(frozen=True, slots=True)
class ListenerStatistics:
    """A snapshot of a listener's counters."""

    sessions: int  # registered: connected or waiting to resume
    pending_handshakes: int
    rejected_handshakes: int  # refused before any session: limits, bad input, timeouts, wrong key
    sessions_failed: int  # ended by a protocol violation or a lost resume
