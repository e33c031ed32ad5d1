"""The session state machine: one table, (state, input) -> next state.

Any pair that is not in :data:`TRANSITIONS` is an error: the engine moves
to ``FAILED``. Terminal states absorb every input. ``docs/protocol.md``
draws its diagram from this same table (``python -m reliable_tcp.state``).
"""

from __future__ import annotations

import enum

__all__ = ["SessionState", "SessionInput", "TRANSITIONS", "TERMINAL_STATES", "next_state", "diagram"]


class SessionState(enum.Enum):
    """Where a session stands."""

    IDLE = "idle"  # created, never connected
    HANDSHAKING = "handshaking"  # client: HELLO sent, waiting for ACCEPT
    OPEN = "open"
    CLOSING = "closing"  # CLOSE sent, waiting for CLOSE_ACK
    DETACHED = "detached"  # no connection; kept for the resume window
    CLOSED = "closed"  # terminal: clean close
    LOST = "lost"  # terminal: rejected or resume window expired
    FAILED = "failed"  # terminal: protocol violation


class SessionInput(enum.Enum):
    """What can happen to a session: frames received, transport and timer
    verdicts, and the local close."""

    CONNECTION_MADE = "connection made"  # client: new transport, send HELLO
    ATTACHED = "attached"  # server: a HELLO for this session was accepted
    RECV_HELLO = "HELLO"
    RECV_ACCEPT = "ACCEPT"
    RECV_REJECT = "REJECT"
    RECV_DATA = "DATA"
    RECV_ACK = "ACK"
    RECV_PING = "PING"
    RECV_PONG = "PONG"
    RECV_CLOSE = "CLOSE"
    RECV_CLOSE_ACK = "CLOSE_ACK"
    RECV_CHALLENGE = "CHALLENGE"
    RECV_PROOF = "PROOF"
    TRANSPORT_LOST = "transport lost"  # EOF, reset, corrupt stream
    PEER_DEAD = "peer dead"  # heartbeat or handshake deadline passed
    RESUME_EXPIRED = "resume window expired"
    CLOSE_CALLED = "close called"


S = SessionState
I = SessionInput

TERMINAL_STATES = frozenset({S.CLOSED, S.LOST, S.FAILED})

_TRAFFIC = (I.RECV_DATA, I.RECV_ACK, I.RECV_PING, I.RECV_PONG)

TRANSITIONS: dict[tuple[SessionState, SessionInput], SessionState] = {
    (S.IDLE, I.CONNECTION_MADE): S.HANDSHAKING,
    (S.IDLE, I.ATTACHED): S.OPEN,
    (S.IDLE, I.CLOSE_CALLED): S.CLOSED,
    (S.IDLE, I.TRANSPORT_LOST): S.IDLE,  # a connection that failed before its HELLO
    (S.HANDSHAKING, I.RECV_ACCEPT): S.OPEN,
    (S.HANDSHAKING, I.RECV_CHALLENGE): S.HANDSHAKING,  # pre-shared key: prove it, then ACCEPT
    (S.HANDSHAKING, I.RECV_REJECT): S.LOST,
    (S.HANDSHAKING, I.TRANSPORT_LOST): S.DETACHED,
    (S.HANDSHAKING, I.PEER_DEAD): S.DETACHED,
    (S.HANDSHAKING, I.RESUME_EXPIRED): S.LOST,
    (S.HANDSHAKING, I.CLOSE_CALLED): S.CLOSED,
    **{(S.OPEN, i): S.OPEN for i in _TRAFFIC},
    (S.OPEN, I.RECV_CLOSE): S.CLOSED,
    (S.OPEN, I.RECV_REJECT): S.LOST,
    (S.OPEN, I.TRANSPORT_LOST): S.DETACHED,
    (S.OPEN, I.PEER_DEAD): S.DETACHED,
    (S.OPEN, I.ATTACHED): S.OPEN,  # a resume replaced a half-open connection
    (S.OPEN, I.CLOSE_CALLED): S.CLOSING,
    **{(S.CLOSING, i): S.CLOSING for i in _TRAFFIC},
    (S.CLOSING, I.RECV_CLOSE): S.CLOSING,  # both closed at once: answer, keep waiting
    (S.CLOSING, I.RECV_CLOSE_ACK): S.CLOSED,
    (S.CLOSING, I.RECV_REJECT): S.LOST,
    (S.CLOSING, I.TRANSPORT_LOST): S.CLOSED,
    (S.CLOSING, I.PEER_DEAD): S.CLOSED,
    (S.CLOSING, I.CLOSE_CALLED): S.CLOSING,
    (S.DETACHED, I.CONNECTION_MADE): S.HANDSHAKING,
    (S.DETACHED, I.ATTACHED): S.OPEN,
    (S.DETACHED, I.TRANSPORT_LOST): S.DETACHED,
    (S.DETACHED, I.RESUME_EXPIRED): S.LOST,
    (S.DETACHED, I.CLOSE_CALLED): S.CLOSED,
    **{(t, i): t for t in TERMINAL_STATES for i in SessionInput},
}


def next_state(state: SessionState, event: SessionInput) -> SessionState | None:
    """The state after ``event``, or None when the pair is not allowed."""
    return TRANSITIONS.get((state, event))


def diagram() -> str:
    """The transition table as a Mermaid state diagram (terminal self-loops left out)."""
    lines = ["stateDiagram-v2", "    [*] --> idle"]
    grouped: dict[tuple[SessionState, SessionState], list[str]] = {}
    for (state, event), target in TRANSITIONS.items():
        if state in TERMINAL_STATES:
            continue
        grouped.setdefault((state, target), []).append(event.value)
    for (state, target), events in grouped.items():
        lines.append(f"    {state.value} --> {target.value}: {', '.join(events)}")
    lines.extend(
        f"    {state.value} --> {S.FAILED.value}: anything else"
        for state in SessionState
        if state not in TERMINAL_STATES
    )
    lines.extend(f"    {state.value} --> [*]" for state in sorted(TERMINAL_STATES, key=lambda s: s.value))
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - documentation helper
    print(diagram())
