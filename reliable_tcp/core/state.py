"""The session state machine: one table, (state, input) -> next state.

Any pair that is not in :data:`TRANSITIONS` is an error. When the input is
a frame from the peer, the engine moves to ``FAILED`` and tells the peer
why; when it is a local call made in the wrong state, the engine raises
:class:`~reliable_tcp.exceptions.InvalidState` and changes nothing.
Terminal states absorb every input. ``docs/protocol.md`` draws its diagram
from this same table (``python -m reliable_tcp.core.state``).

Closing is symmetric, like TCP's FIN exchange: each side sends CLOSE once
everything it queued is on the wire, answers the peer's CLOSE with
CLOSE_ACK, and the session is closed once both CLOSEs are acknowledged, so
messages in flight in either direction are delivered *and* acknowledged.
"""

from __future__ import annotations

import enum

__all__ = [
    "frame_table",
    "event_table",
    "SessionState",
    "SessionInput",
    "TRANSITIONS",
    "TERMINAL_STATES",
    "LIVE_STATES",
    "CLOSING_STATES",
    "LOCAL_INPUTS",
    "next_state",
    "diagram",
]


class SessionState(enum.Enum):
    """Where a session stands."""

    IDLE = "idle"  # no connection, and (client) no session yet
    CONNECTING = "connecting"  # client: HELLO for a new session sent
    RESUMING = "resuming"  # client: HELLO resuming this session sent
    OPEN = "open"
    CLOSING = "closing"  # our CLOSE sent; waiting for its CLOSE_ACK and the peer's CLOSE
    CLOSE_ACKED = "close_acked"  # our CLOSE acknowledged; waiting for the peer's CLOSE
    PEER_CLOSED = "peer_closed"  # the peer's CLOSE answered, ours sent; waiting for its CLOSE_ACK
    DETACHED = "detached"  # no connection; kept for the resume window
    CLOSED = "closed"  # terminal: clean close (or abort)
    LOST = "lost"  # terminal: refused, aborted by the peer, expired, or stalled
    FAILED = "failed"  # terminal: protocol violation

    # Members are singletons: hash by identity, in C, not by name in Python
    # (state sets are consulted on every frame and every send).
    __hash__ = object.__hash__


class SessionInput(enum.Enum):
    """What can happen to a session: frames received, transport and timer
    verdicts, and the local calls."""

    CONNECTION_MADE = "connection made"  # client: new transport, send HELLO
    ATTACHED = "attached"  # server: a HELLO for this session was accepted
    RECV_HELLO = "HELLO"
    RECV_ACCEPT = "ACCEPT"
    RECV_REJECT = "REJECT"  # a refusal that ends the session
    RECV_REJECT_RETRY = "REJECT busy or timeout"  # SERVER_BUSY / HANDSHAKE_TIMEOUT (NOT_HERE while resuming): try again later
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
    STALLED = "stalled"  # too many connections in a row ended without progress
    CLOSE_CALLED = "close called"
    ABORT_CALLED = "abort called"

    __hash__ = object.__hash__  # as SessionState


S = SessionState
I = SessionInput

TERMINAL_STATES = frozenset({S.CLOSED, S.LOST, S.FAILED})
#: States with an established connection, where heartbeats run.
CLOSING_STATES = frozenset({S.CLOSING, S.CLOSE_ACKED, S.PEER_CLOSED})
LIVE_STATES = frozenset({S.OPEN}) | CLOSING_STATES
#: Inputs that come from this side's own calls, not from the peer: one
#: that is not allowed is the caller's mistake, not a protocol violation.
LOCAL_INPUTS = frozenset({I.CONNECTION_MADE, I.ATTACHED, I.CLOSE_CALLED, I.ABORT_CALLED})

_HEARTBEAT = (I.RECV_PING, I.RECV_PONG)
_TRAFFIC = (I.RECV_DATA, I.RECV_ACK, *_HEARTBEAT)
_REJECTS = (I.RECV_REJECT, I.RECV_REJECT_RETRY)

TRANSITIONS: dict[tuple[SessionState, SessionInput], SessionState] = {
    (S.IDLE, I.CONNECTION_MADE): S.CONNECTING,
    (S.IDLE, I.ATTACHED): S.OPEN,
    (S.IDLE, I.TRANSPORT_LOST): S.IDLE,  # a connection that failed before its HELLO
    (S.IDLE, I.CLOSE_CALLED): S.CLOSED,
    (S.IDLE, I.ABORT_CALLED): S.CLOSED,
    # The first handshake: until an ACCEPT there is no session to lose.
    (S.CONNECTING, I.RECV_ACCEPT): S.OPEN,
    (S.CONNECTING, I.RECV_CHALLENGE): S.CONNECTING,  # pre-shared key: prove it, then ACCEPT
    (S.CONNECTING, I.RECV_REJECT): S.LOST,
    (S.CONNECTING, I.RECV_REJECT_RETRY): S.IDLE,
    (S.CONNECTING, I.TRANSPORT_LOST): S.IDLE,
    (S.CONNECTING, I.PEER_DEAD): S.IDLE,
    (S.CONNECTING, I.CLOSE_CALLED): S.CLOSED,
    (S.CONNECTING, I.ABORT_CALLED): S.CLOSED,
    (S.RESUMING, I.RECV_ACCEPT): S.OPEN,
    (S.RESUMING, I.RECV_CHALLENGE): S.RESUMING,
    (S.RESUMING, I.RECV_REJECT): S.LOST,
    (S.RESUMING, I.RECV_REJECT_RETRY): S.DETACHED,
    (S.RESUMING, I.TRANSPORT_LOST): S.DETACHED,
    (S.RESUMING, I.PEER_DEAD): S.DETACHED,
    (S.RESUMING, I.RESUME_EXPIRED): S.LOST,
    (S.RESUMING, I.CLOSE_CALLED): S.CLOSED,
    (S.RESUMING, I.ABORT_CALLED): S.CLOSED,
    **{(S.OPEN, i): S.OPEN for i in _TRAFFIC},
    (S.OPEN, I.ATTACHED): S.OPEN,  # a resume replaced a half-open connection
    (S.OPEN, I.RECV_CLOSE): S.PEER_CLOSED,  # answer, send what is queued, then our CLOSE
    (S.OPEN, I.TRANSPORT_LOST): S.DETACHED,
    (S.OPEN, I.PEER_DEAD): S.DETACHED,
    (S.OPEN, I.CLOSE_CALLED): S.CLOSING,
    (S.OPEN, I.ABORT_CALLED): S.CLOSED,  # REJECT ABORTED tells the peer
    **{(S.OPEN, i): S.LOST for i in _REJECTS},
    **{(S.CLOSING, i): S.CLOSING for i in _TRAFFIC},
    (S.CLOSING, I.RECV_CLOSE_ACK): S.CLOSE_ACKED,
    (S.CLOSING, I.RECV_CLOSE): S.PEER_CLOSED,  # both closed at once: answer, wait for our CLOSE_ACK
    **{(S.CLOSE_ACKED, i): S.CLOSE_ACKED for i in _TRAFFIC},  # the peer's last messages still arrive
    (S.CLOSE_ACKED, I.RECV_CLOSE): S.CLOSED,
    **{(S.PEER_CLOSED, i): S.PEER_CLOSED for i in (I.RECV_ACK, *_HEARTBEAT)},  # no DATA after the peer's CLOSE
    (S.PEER_CLOSED, I.RECV_CLOSE_ACK): S.CLOSED,
    **{
        (state, i): target
        for state in CLOSING_STATES
        for i, target in (
            (I.CLOSE_CALLED, state),
            (I.ABORT_CALLED, S.CLOSED),
            (I.TRANSPORT_LOST, S.CLOSED),  # a close is never resumed
            (I.PEER_DEAD, S.CLOSED),
            (I.RECV_REJECT, S.LOST),
            (I.RECV_REJECT_RETRY, S.LOST),
        )
    },
    (S.DETACHED, I.CONNECTION_MADE): S.RESUMING,
    (S.DETACHED, I.ATTACHED): S.OPEN,
    (S.DETACHED, I.TRANSPORT_LOST): S.DETACHED,
    (S.DETACHED, I.RESUME_EXPIRED): S.LOST,
    (S.DETACHED, I.STALLED): S.LOST,
    (S.DETACHED, I.CLOSE_CALLED): S.CLOSED,
    (S.DETACHED, I.ABORT_CALLED): S.CLOSED,
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
        f"    {state.value} --> {S.FAILED.value}: any other frame"
        for state in SessionState
        if state not in TERMINAL_STATES
    )
    lines.extend(f"    {state.value} --> [*]" for state in sorted(TERMINAL_STATES, key=lambda s: s.value))
    return "\n".join(lines)


_FRAME_COLUMNS = [
    (I.RECV_HELLO, "HELLO"),
    (I.RECV_CHALLENGE, "CHALLENGE"),
    (I.RECV_PROOF, "PROOF"),
    (I.RECV_ACCEPT, "ACCEPT"),
    (I.RECV_REJECT, "REJECT"),
    (I.RECV_REJECT_RETRY, "REJECT busy/timeout"),
    (I.RECV_DATA, "DATA"),
    (I.RECV_ACK, "ACK"),
    (I.RECV_PING, "PING"),
    (I.RECV_PONG, "PONG"),
    (I.RECV_CLOSE, "CLOSE"),
    (I.RECV_CLOSE_ACK, "CLOSE_ACK"),
]
_CLIENT_CONNECTED = [S.CONNECTING, S.RESUMING, S.OPEN, S.CLOSING, S.CLOSE_ACKED, S.PEER_CLOSED]
_SERVER_CONNECTED = [S.OPEN, S.CLOSING, S.CLOSE_ACKED, S.PEER_CLOSED]
_EVENT_COLUMNS = [
    (I.CONNECTION_MADE, "new connection (client)"),
    (I.ATTACHED, "HELLO accepted (server)"),
    (I.TRANSPORT_LOST, "connection lost"),
    (I.PEER_DEAD, "silence / handshake timeout"),
    (I.RESUME_EXPIRED, "resume window over"),
    (I.STALLED, "stalled"),
    (I.CLOSE_CALLED, "close()"),
    (I.ABORT_CALLED, "abort()"),
]


def frame_table(client: bool) -> str:
    """Which frame is legal in which state of one role, and where it leads
    (a Markdown table for docs/protocol.md). ``—`` is a protocol violation."""
    columns = [name for _, name in _FRAME_COLUMNS]
    lines = ["| state | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for state in _CLIENT_CONNECTED if client else _SERVER_CONNECTED:
        cells = [target.value if (target := next_state(state, event)) is not None else "—" for event, _ in _FRAME_COLUMNS]
        lines.append(f"| {state.value} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def event_table() -> str:
    """Where each local call, transport or timer verdict leads, per state
    (a Markdown table). ``·`` is an input that can't happen there."""
    columns = [name for _, name in _EVENT_COLUMNS]
    lines = ["| state | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for state in SessionState:
        if state in TERMINAL_STATES:
            continue
        cells = [target.value if (target := next_state(state, event)) is not None else "·" for event, _ in _EVENT_COLUMNS]
        lines.append(f"| {state.value} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - documentation helper
    print(frame_table(client=True), frame_table(client=False), event_table(), diagram(), sep="\n\n")
