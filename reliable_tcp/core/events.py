"""Events the session engine reports: past-tense facts for the shell to act on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

__all__ = [
    "HandshakeCompleted",
    "PeerConfirmed",
    "MessagesReceived",
    "MessagesAcknowledged",
    "PongReceived",
    "TransportFailed",
    "PeerClosed",
    "SessionClosed",
    "SessionFailed",
    "Event",
]


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """The session is open on the current connection.

    ``replayed`` counts this side's messages that will be sent again
    because the peer lacked them.
    """

    session_id: bytes
    resumed: bool
    replayed: int


@dataclass(frozen=True, slots=True)
class PeerConfirmed:
    """Server: the client spoke after the ACCEPT of a new session, so it
    holds the session; only now is the session worth offering to accept()."""


@dataclass(frozen=True, slots=True)
class MessagesReceived:
    """New messages, in order, starting at ``first_seq``; each arrives once."""

    first_seq: int
    messages: tuple[bytes, ...]
    nbytes: int = 0  # total payload bytes, so nobody has to add them up again


@dataclass(frozen=True, slots=True)
class MessagesAcknowledged:
    """The peer acknowledged everything up to ``ack``; ``freed`` left the window."""

    ack: int
    freed: int


@dataclass(frozen=True, slots=True)
class PongReceived:
    """A heartbeat was answered after ``rtt`` seconds."""

    rtt: float


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """The engine judged the current connection unusable; the shell must drop it.

    The session itself survives (it is detached and can be resumed), or,
    before the first handshake, the next attempt starts a new one.
    ``error`` is the refusal behind it, if the peer sent one.
    """

    reason: str
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The peer closed the session; ``last_seq`` was its last message."""

    last_seq: int


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """The session ended by a close (``by_peer``: the peer's CLOSE came
    first) or by this side's abort. ``unacked`` lists this side's messages
    the peer never acknowledged: empty after a complete close handshake."""

    by_peer: bool
    unacked: tuple[tuple[int, bytes], ...]
    aborted: bool = False


@dataclass(frozen=True, slots=True)
class SessionFailed:
    """The session ended without a clean close and can't be resumed (the
    shell raises :class:`~reliable_tcp.exceptions.SessionLost` for it).

    ``unacked`` lists every message of this side the peer never
    acknowledged; ``error`` is set when a protocol violation ended it.
    """

    reason: str
    unacked: tuple[tuple[int, bytes], ...]
    error: Exception | None = None


Event = Union[
    HandshakeCompleted,
    PeerConfirmed,
    MessagesReceived,
    MessagesAcknowledged,
    PongReceived,
    TransportFailed,
    PeerClosed,
    SessionClosed,
    SessionFailed,
]
