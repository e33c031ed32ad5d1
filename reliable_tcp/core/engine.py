"""The pure session engine: one side of one session, across any number of connections.

No sockets, threads or clocks: the shell passes received bytes and ``now``
(monotonic seconds) in, and takes bytes to send and events out. Every
timing decision (ack due, heartbeat due, peer dead, handshake timeout,
resume window over) is made here from ``now``, so tests can jump time.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from ..exceptions import (
    AuthenticationFailed,
    ChannelBroken,
    ChannelClosed,
    CorruptFrame,
    FrameError,
    HandshakeRejected,
    InvalidState,
    MessageTooLarge,
    ProtocolError,
    RejectedByPeer,
    SequenceClaimError,
    UnsupportedVersion,
    UsageError,
)
from . import auth
from . import events as ev
from .config import SessionConfig
from .frames import (
    DATA_PER_MESSAGE_OVERHEAD,
    DEFAULT_MAX_MESSAGE_SIZE,
    ID_SIZE,
    MAX_SEQ,
    NONCE_SIZE,
    RETRYABLE_REJECTS,
    Accept,
    Ack,
    Challenge,
    Close,
    CloseAck,
    Data,
    FrameDecoder,
    Hello,
    Ping,
    Pong,
    Proof,
    ReceiveBuffer,
    Reject,
    RejectReason,
    encode,
    encode_data_parts,
    max_frame_body,
)
from .state import CLOSING_STATES, LIVE_STATES, LOCAL_INPUTS, TERMINAL_STATES, SessionInput, SessionState, next_state
from .window import ReceiveSequence, SendWindow

__all__ = ["SessionEngine", "EngineCounters"]

logger = logging.getLogger(__name__)

S = SessionState
I = SessionInput

_NO_ID = bytes(ID_SIZE)
_DATA_HEAD_SIZE = 20  # first seq, ack, count
#: The accepting side pings only after this many heartbeat intervals without
#: hearing a PING (see SessionEngine._ping_due): more than one, so the
#: client's next PING always comes first while it is alive.
ANSWERING_SIDE_SLACK = 1.5
#: The most PONGs a side sends per second (and in a burst): PONGs carry
#: nothing new, and docs/protocol.md 5.3 caps those at 1,000 per second.
PONGS_PER_SECOND = 1_000


def _refilled(budget: float, elapsed: float, rate: int) -> float:
    """A token bucket's tokens after ``elapsed`` seconds at ``rate`` per
    second, up to one second's worth."""
    return min(float(rate), budget + elapsed * rate)


_INPUT_OF_FRAME = {
    Hello: I.RECV_HELLO,
    Accept: I.RECV_ACCEPT,
    Data: I.RECV_DATA,
    Ack: I.RECV_ACK,
    Ping: I.RECV_PING,
    Pong: I.RECV_PONG,
    Close: I.RECV_CLOSE,
    CloseAck: I.RECV_CLOSE_ACK,
    Challenge: I.RECV_CHALLENGE,
    Proof: I.RECV_PROOF,
}
# The table's frame transitions by state, then frame class: one lookup per
# frame (REJECT depends on its code and is looked up on its own).
_FRAME_TARGETS: dict[SessionState, dict[type, SessionState]] = {
    state: {
        frame_type: target
        for frame_type, event in _INPUT_OF_FRAME.items()
        if (target := next_state(state, event)) is not None
    }
    for state in SessionState
}
_HANDSHAKE_STATES = (S.CONNECTING, S.RESUMING)
#: Where a message may be queued (it goes out once the session is connected).
_SENDABLE_STATES = frozenset({S.IDLE, S.CONNECTING, S.RESUMING, S.OPEN, S.DETACHED})
#: What a REJECT received means, for the reason a session ends with.
_REJECT_MEANING = {
    RejectReason.SESSION_UNKNOWN: "the peer does not know this session (expired, ended, or a wrong secret)",
    RejectReason.ABORTED: "aborted by the peer",
}


@dataclass(slots=True)
class EngineCounters:
    """Running totals kept by the engine (the shell snapshots them)."""

    messages_sent: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    bytes_received: int = 0
    handshakes: int = 0
    resumes: int = 0
    transport_failures: int = 0
    last_rtt: float | None = None
    #: Seconds from the last byte received to the dead verdict, for the last outage.
    last_detection_time: float | None = None


class SessionEngine:
    """One side of a session. ``client=True`` for the side that connects.

    A server-side engine is created and attached by
    :class:`reliable_tcp.core.handshake.SessionRegistry`; a client-side engine
    starts idle and is told of each new connection with
    :meth:`connection_made`.

    Errors: a frame from the peer that breaks the protocol ends the session
    in ``FAILED`` (a REJECT tells the peer why) and is reported as a
    :class:`~reliable_tcp.core.events.SessionFailed` event, never raised; a local
    call the state does not allow raises
    :class:`~reliable_tcp.exceptions.InvalidState` and changes nothing.
    """

    def __init__(
        self,
        config: SessionConfig,
        *,
        client: bool,
        session_id: bytes = _NO_ID,
        secret: bytes = _NO_ID,
        token_source: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.config = config
        self.client = client
        self.session_id = session_id
        self._secret = secret
        self._previous_secret: bytes | None = None
        self._state = S.IDLE
        self._window = SendWindow(config.window_messages, config.window_bytes)
        self._recv = ReceiveSequence()
        self._decoder = FrameDecoder(config.max_frame_size)
        self._output: list[bytes] = []
        self._events: list[ev.Event] = []
        self.counters = EngineCounters()
        # What this side announces in its handshake (None: the protocol default).
        self._announced_limit = None if config.max_message_size == DEFAULT_MAX_MESSAGE_SIZE else config.max_message_size
        self._peer_max_message = DEFAULT_MAX_MESSAGE_SIZE  # until the peer's handshake says otherwise
        self._data_frame_budget = min(config.data_frame_target, max_frame_body(DEFAULT_MAX_MESSAGE_SIZE))
        self._sendable_limit = min(config.max_message_size, DEFAULT_MAX_MESSAGE_SIZE)  # max_sendable_size, kept
        # Timers (monotonic seconds supplied by the caller).
        self._connected_at = 0.0
        self._last_received = 0.0
        self._last_output = 0.0
        self._heard_ping_at: float | None = None
        # The quiet heartbeat (docs/protocol.md 6.1): whether this client still
        # asks for it (a server that refused the flag is not asked again), what
        # this connection's HELLO asked, and whether this connection has it.
        self._ask_quiet = client and config.quiet_heartbeat
        self._hello_asked_quiet = False
        self._quiet = False
        self._detached_since: float | None = None
        self._ack_deadline: float | None = None
        self._ack_now = False
        self._recv_unacked = 0
        self._recv_unacked_bytes = 0
        self._peer_last_seq: int | None = None
        self._closed_by_peer = False
        self._token = token_source
        self._hello_sent = b""  # the HELLO frame of this connection, for the key proof
        self._auth_nonce: bytes | None = None
        self._server_proved_key = False
        self._awaiting_confirmation = False
        self._committed = 0
        self._frame_budget = float(config.max_control_frames_per_second)
        self._budget_time = 0.0
        self._pong_budget = float(PONGS_PER_SECOND)
        self._pong_time = 0.0
        # Progress: did the current connection move a message? How many in a row did not?
        self._progress = False
        self._connections_without_progress = 0

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> SessionState:
        """The current state."""
        return self._state

    @property
    def secret(self) -> bytes:
        """The current resume secret (never log it)."""
        return self._secret

    @property
    def previous_secret(self) -> bytes:
        """Server: the secret still accepted until the client confirms the new one (or b"")."""
        return self._previous_secret or b""

    @property
    def unacked_count(self) -> int:
        """Messages sent (or queued) and not yet acknowledged."""
        return self._window.count

    @property
    def unacked_bytes(self) -> int:
        """Payload bytes of the unacknowledged messages."""
        return self._window.bytes

    @property
    def retransmitted(self) -> int:
        """Messages sent again after a resume."""
        return self._window.retransmitted

    @property
    def duplicates_dropped(self) -> int:
        """Received messages dropped because they had already arrived."""
        return self._recv.duplicates

    @property
    def receive_expect(self) -> int:
        """Next sequence number expected from the peer."""
        return self._recv.expect

    @property
    def next_seq(self) -> int:
        """Sequence number the next sent message will get."""
        return self._window.next_seq

    @property
    def acked_seq(self) -> int:
        """The highest sequence number the peer has acknowledged: every
        message up to it is the peer's (0 before the first)."""
        return self._window.base - 1

    @property
    def peer_max_message_size(self) -> int:
        """The largest message the peer accepts (its announcement, or the default)."""
        return self._peer_max_message

    @property
    def max_sendable_size(self) -> int:
        """The largest message :meth:`send_message` takes now."""
        return min(self.config.max_message_size, self._peer_max_message)

    def unacked(self) -> tuple[tuple[int, bytes], ...]:
        """``(seq, payload)`` of every message the peer has not acknowledged."""
        return self._window.unacked()

    def silence(self, now: float) -> float:
        """Seconds since the last byte arrived on the current connection."""
        return now - self._last_received

    def _move(self, event: SessionInput, now: float) -> SessionState:
        target = next_state(self._state, event)
        if target is None:
            if event in LOCAL_INPUTS:
                raise InvalidState(f"{event.value} is not allowed in state {self._state.value}")
            error = ProtocolError(f"{event.value} is not allowed in state {self._state.value}")
            self._fail(error, now)
            raise error
        previous, self._state = self._state, target
        if target in (S.DETACHED, S.IDLE) and previous not in (S.DETACHED, S.IDLE):
            if target is S.DETACHED and self._detached_since is None:
                self._detached_since = now
            self._decoder = FrameDecoder(self.config.max_frame_size)
            self._output.clear()
            self._ack_deadline = None
            self._ack_now = False
        elif target is S.OPEN:
            self._detached_since = None
        return target

    def _fail(self, error: Exception, now: float) -> None:
        """End the session because the peer broke the protocol; tell it why."""
        if self._state in TERMINAL_STATES:
            return
        logger.warning("session %s failed: %s", self.session_id.hex(), error)
        if isinstance(error, SequenceClaimError):
            reason = RejectReason.BAD_SEQUENCE
        elif isinstance(error, AuthenticationFailed):
            reason = RejectReason.AUTH_FAILED
        elif isinstance(error, UnsupportedVersion):
            reason = RejectReason.UNSUPPORTED_VERSION
        else:
            reason = RejectReason.PROTOCOL_ERROR
        connected = self._state in LIVE_STATES or self._state in _HANDSHAKE_STATES
        self._state = S.FAILED
        self._output = [encode(Reject(reason, str(error)))] if connected else []
        self._events.append(ev.SessionFailed(f"protocol error: {error}", self._window.unacked(), error))

    def _lose(self, event: SessionInput, reason: str, now: float, error: Exception | None = None) -> None:
        """End the session as lost (expired, stalled, refused), reporting the unacked."""
        self._move(event, now)
        self._output.clear()
        self._events.append(ev.SessionFailed(reason, self._window.unacked(), error))

    # ------------------------------------------------------------- transport

    def connection_made(self, now: float) -> None:
        """Client: a new connection is up; queue the HELLO (new or resume)."""
        if not self.client:
            raise InvalidState("connection_made is for the connecting side")
        self._move(I.CONNECTION_MADE, now)
        self._start_connection(now)
        resume = self._state is S.RESUMING
        self._auth_nonce = self._token(NONCE_SIZE) if self.config.psk is not None else None
        self._server_proved_key = False
        self._hello_asked_quiet = self._ask_quiet
        hello = Hello(
            resume, self.session_id, self._secret, self._acked_upto() + 1, self._auth_nonce, self._announced_limit, self._ask_quiet
        )
        self._hello_sent = encode(hello)
        self._output.append(self._hello_sent)

    def _start_connection(self, now: float) -> None:
        self._decoder = FrameDecoder(self.config.max_frame_size)
        self._output.clear()
        self._connected_at = self._last_received = self._last_output = now
        # The server counts the connection's start as a PING heard: the client's first comes before its own.
        self._heard_ping_at = None if self.client else now
        self._quiet = False  # until this connection's handshake agrees on it
        self._frame_budget, self._budget_time = float(self.config.max_control_frames_per_second), now
        self._pong_budget, self._pong_time = float(PONGS_PER_SECOND), now
        self._progress = False

    def can_resume_from(self, expect: int) -> bool:
        """Server: whether a resume claiming ``expect`` can be satisfied."""
        return self._window.base <= expect <= self._window.send_next

    def reject_resume(self, expect: int, now: float) -> None:
        """Server: a resume claimed ``expect``, which can't be satisfied; end the session."""
        self._fail(
            SequenceClaimError(
                f"peer expects message {expect}, but only {self._window.base}..{self._window.send_next} can be sent"
            ),
            now,
        )

    def resume(self, hello: Hello, new_secret: bytes, now: float) -> None:
        """Server: ``hello`` asks to resume this session on a new connection.

        Raises HandshakeRejected: SESSION_UNKNOWN when the session can't be
        resumed or the secret is wrong (the same answer, at the same cost),
        BAD_SEQUENCE when the claim is impossible (the session then ends).
        """
        secret_ok = self.secret_matches(hello.secret)  # first, so an ended session costs the same
        if not secret_ok or self._state not in (S.OPEN, S.DETACHED):
            raise HandshakeRejected(RejectReason.SESSION_UNKNOWN, "no such session")
        if not self.can_resume_from(hello.expect):
            self.reject_resume(hello.expect, now)
            raise HandshakeRejected(RejectReason.BAD_SEQUENCE, "resume claim can't be satisfied")
        self.attach(hello, new_secret, now)

    def secret_matches(self, presented: bytes) -> bool:
        """Server: constant-time check of a presented resume secret.

        Until the client proves (by sending anything after ACCEPT) that it
        holds the newest secret, the one it presented last is accepted too,
        so a connection cut just after ACCEPT does not lock it out.
        """
        ok = hmac.compare_digest(presented, self._secret)
        if self._previous_secret is not None:
            ok |= hmac.compare_digest(presented, self._previous_secret)
        return ok

    def attach(self, hello: Hello, new_secret: bytes, now: float) -> None:
        """Server: the registry accepted ``hello`` for this session on a new connection."""
        if self.client:
            raise InvalidState("attach is for the listening side")
        replacing = self._state is S.OPEN
        self._move(I.ATTACHED, now)
        if replacing:
            self.counters.transport_failures += 1
            self._count_progress(now)
            if self._state in TERMINAL_STATES:
                return
        before = self._window.base
        replayed = self._window.rewind(hello.expect) if hello.resume else 0
        if hello.resume:
            self.counters.resumes += 1
            self._previous_secret = hello.secret
        else:
            self._awaiting_confirmation = True
        self.counters.handshakes += 1
        self._secret = new_secret
        self._start_connection(now)
        self._ack_sent()  # the expectation in the handshake acknowledges everything received
        self._progress = self._window.base > before
        if not self._learn_peer_limit(hello.max_message, now):
            return
        self._quiet = hello.quiet and self.config.quiet_heartbeat
        self._output.append(
            encode(Accept(hello.resume, self.session_id, new_secret, self._acked_upto() + 1, self._announced_limit, self._quiet))
        )
        self._events.append(ev.HandshakeCompleted(self.session_id, hello.resume, replayed))

    def _learn_peer_limit(self, announced: int | None, now: float) -> bool:
        """Take the peer's message limit from its handshake; False if queued
        messages can never reach it (the session is failed)."""
        limit = DEFAULT_MAX_MESSAGE_SIZE if announced is None else announced
        self._peer_max_message = limit
        self._sendable_limit = min(self.config.max_message_size, limit)
        self._data_frame_budget = max(1, min(self.config.data_frame_target, max_frame_body(limit)))
        largest = self._window.largest()
        if largest > limit:
            self._fail(
                ProtocolError(f"the peer accepts messages of up to {limit} bytes, but a queued one has {largest}"), now
            )
            return False
        return True

    def receive_eof(self, now: float) -> None:
        """The peer closed its end of the connection (``recv`` returned ``b""``)."""
        self.transport_lost(now, "connection closed by peer")

    def transport_lost(self, now: float, reason: str = "transport lost") -> None:
        """The connection is gone (reset, EOF, error); keep the session for a resume."""
        if self._state in (S.IDLE, S.DETACHED) or self._state in TERMINAL_STATES:
            self._move(I.TRANSPORT_LOST, now)  # nothing to drop
            return
        logger.info("session %s: %s", self.session_id.hex(), reason)
        self._connection_ended(I.TRANSPORT_LOST, now)

    def _connection_ended(self, event: SessionInput, now: float) -> None:
        """The current connection is gone (``event``: transport lost or peer dead)."""
        self.counters.transport_failures += 1
        was = self._state
        self._move(event, now)
        if was in CLOSING_STATES:
            self._events.append(ev.SessionClosed(self._closed_by_peer, self._window.unacked()))
        elif was is S.OPEN:
            self._count_progress(now)

    def _count_progress(self, now: float) -> None:
        """An open connection ended: end the session if too many in a row
        moved nothing while messages were waiting for the peer."""
        if self._progress or not self._window.count:
            self._connections_without_progress = 0
            return
        self._connections_without_progress += 1
        limit = self.config.max_resumes_without_progress
        if self._connections_without_progress >= limit and self._state is S.DETACHED:
            self._lose(
                I.STALLED,
                f"{limit} connections in a row ended before a single message was delivered or acknowledged",
                now,
            )

    @property
    def quiet_heartbeat(self) -> bool:
        """Whether this connection's handshake agreed on the quiet heartbeat
        (docs/protocol.md 6.1): an idle session's PING and PONG come once
        per :meth:`ping_period` instead of once per heartbeat interval."""
        return self._quiet

    def ping_period(self) -> float:
        """How long this side stays silent before it PINGs (protocol.md 6
        and 6.1): the heartbeat interval, or with the quiet heartbeat
        ``dead_after`` minus one interval (twice the interval by default;
        never less than one): the peer still hears something one interval
        before its dead verdict would fall due."""
        interval = self.config.heartbeat_interval
        if not self._quiet:
            return interval
        return max(interval, self.config.dead_after_seconds - interval)

    def hold_liveness(self, now: float, alive_at: float | None = None) -> None:
        """The shell knows the peer was alive at ``alive_at`` (default: now)
        although nothing reached the engine: bytes wait in the kernel for a
        starved reader, or the shell stopped reading on purpose and the
        peer's kernel still acknowledges. The dead verdict counts from then."""
        if self._state in LIVE_STATES:
            self._last_received = max(self._last_received, now if alive_at is None else min(now, alive_at))

    def receive_data(self, data: bytes | bytearray | memoryview | ReceiveBuffer, now: float) -> None:
        """Bytes arrived on the current connection: as bytes, or in a
        reader's :class:`ReceiveBuffer` (decoded in place; what is taken is
        marked consumed, an incomplete frame stays in it)."""
        state = self._state
        if state not in LIVE_STATES and state not in _HANDSHAKE_STATES:
            if state in TERMINAL_STATES:
                return
            raise InvalidState(f"bytes received in state {state.value}, with no connection")
        self._last_received = now
        try:
            if isinstance(data, ReceiveBuffer):
                frames = self._decoder.feed_buffer(data)
            else:
                frames = self._decoder.feed(data)
        except CorruptFrame as exc:
            # Damage on the way spoils this connection, not the session.
            self._transport_failed(f"corrupt stream: {exc}", I.TRANSPORT_LOST, now)
            return
        except FrameError as exc:
            # Well-formed damage is the peer's doing: resuming would only
            # replay the same frame into the same refusal.
            self._fail(exc, now)
            return
        if (
            (self._awaiting_confirmation or self._previous_secret is not None)
            and state not in _HANDSHAKE_STATES
            and any(not isinstance(frame, Reject) for frame in frames)
        ):
            # Anything but a refusal sent after ACCEPT proves the client received it.
            self._previous_secret = None
            if self._awaiting_confirmation:
                self._awaiting_confirmation = False
                self._events.append(ev.PeerConfirmed())
        for frame in frames:
            if self._state in TERMINAL_STATES:  # a frame before this one ended the session
                break
            try:
                self._handle_frame(frame, now)
            except ProtocolError as exc:
                self._fail(exc, now)
                break

    def _frame_carried_nothing_new(self, now: float) -> None:
        """Token bucket for frames that carry nothing new: refilled at
        max_control_frames_per_second, up to one second's worth."""
        rate = self.config.max_control_frames_per_second
        self._frame_budget = _refilled(self._frame_budget, now - self._budget_time, rate) - 1
        self._budget_time = now
        if self._frame_budget < 0:
            raise ProtocolError(f"more than {rate} frames per second that carry nothing new")

    def _pong_allowed(self, now: float) -> bool:
        """Whether a PING may be answered now: PONGs count among the frames
        this side sends that carry nothing new, at most PONGS_PER_SECOND
        (docs/protocol.md 5.3), so a peer that pings faster than that (it
        broke the rule first) is not answered beyond it."""
        self._pong_budget = _refilled(self._pong_budget, now - self._pong_time, PONGS_PER_SECOND)
        self._pong_time = now
        if self._pong_budget < 1:
            return False
        self._pong_budget -= 1
        return True

    def _transport_failed(self, reason: str, event: SessionInput, now: float, error: Exception | None = None) -> None:
        """The engine judged the connection unusable: tell the shell to drop it."""
        self._events.append(ev.TransportFailed(reason, error))
        self._connection_ended(event, now)

    # ---------------------------------------------------------------- frames

    def _handle_frame(self, frame: object, now: float) -> None:
        state = self._state
        if isinstance(frame, Reject):
            self._on_reject(frame, now)
            return
        target = _FRAME_TARGETS[state].get(type(frame))
        if target is None:
            event = _INPUT_OF_FRAME[type(frame)]
            raise ProtocolError(f"{event.value} frame is not allowed in state {state.value}")
        if isinstance(frame, Data):
            self._on_data(frame, now)
        elif isinstance(frame, Ack):
            if not self._on_ack(frame.ack):
                self._frame_carried_nothing_new(now)
        elif isinstance(frame, Ping):
            self._frame_carried_nothing_new(now)
            self._heard_ping_at = now
            if self._pong_allowed(now):
                self._output.append(encode(Pong(frame.token)))
        elif isinstance(frame, Pong):
            self._frame_carried_nothing_new(now)
            rtt = max(0.0, now - frame.token / 1e6)
            self.counters.last_rtt = rtt
            self._events.append(ev.PongReceived(rtt))
        elif isinstance(frame, Accept):
            self._on_accept(frame, now)
            return
        elif isinstance(frame, Challenge):
            self._on_challenge(frame)
        elif isinstance(frame, Close):
            self._on_close(frame, target, now)
            return
        elif isinstance(frame, CloseAck):
            self._on_ack(frame.ack)
            self._state = target
            if target is S.CLOSED:
                self._events.append(ev.SessionClosed(self._closed_by_peer, self._window.unacked()))
            return
        self._state = target

    def _on_reject(self, frame: Reject, now: float) -> None:
        # NOT_HERE names the node of an existing session: a resume retries it
        # (the route may heal); answering a new session's HELLO, it ends the
        # attempt like any other code (docs/protocol.md 4.6, section 8).
        retry = frame.reason in RETRYABLE_REJECTS and (frame.reason is not RejectReason.NOT_HERE or self._state is S.RESUMING)
        event = I.RECV_REJECT_RETRY if retry else I.RECV_REJECT
        target = next_state(self._state, event)
        if target is None:
            raise ProtocolError(f"REJECT is not allowed in state {self._state.value}")
        error = RejectedByPeer(frame.reason, frame.text)
        if self._hello_asked_quiet and frame.reason is RejectReason.PROTOCOL_ERROR and self._state in _HANDSHAKE_STATES:
            # A server that predates the QUIET flag refuses it as an unknown
            # flag: ask again without it, on a new connection, and never again
            # in this session (docs/protocol.md 6.1).
            retry_target = next_state(self._state, I.RECV_REJECT_RETRY)
            if retry_target in (S.IDLE, S.DETACHED):
                logger.info("session %s: the server refused the quiet heartbeat; asking without it", self.session_id.hex())
                self._ask_quiet = False
                self._transport_failed(str(error), I.RECV_REJECT_RETRY, now, error)
                return
        if target in (S.IDLE, S.DETACHED):
            # Busy or slow: this attempt is refused, the session (if any) is not.
            self._transport_failed(str(error), event, now, error)
            return
        meaning = _REJECT_MEANING.get(frame.reason)
        self._lose(event, f"{meaning} ({frame.reason.name})" if meaning else str(error), now, error)

    def _on_challenge(self, challenge: Challenge) -> None:
        psk, nonce = self.config.psk, self._auth_nonce
        if psk is None or nonce is None or self._server_proved_key:
            raise ProtocolError("CHALLENGE without a pre-shared key exchange")
        if not auth.proofs_match(auth.server_proof(psk, nonce, challenge.nonce), challenge.proof):
            raise AuthenticationFailed("the server could not prove the pre-shared key")
        self._server_proved_key = True
        self._output.append(encode(Proof(auth.client_proof(psk, challenge.nonce, nonce, self._hello_sent))))

    def _on_accept(self, accept: Accept, now: float) -> None:
        if self.config.psk is not None and not self._server_proved_key:
            raise AuthenticationFailed("the server accepted without proving the pre-shared key")
        resuming = self._state is S.RESUMING
        if accept.resumed != resuming or (resuming and accept.session_id != self.session_id):
            raise ProtocolError("ACCEPT does not answer the HELLO that was sent")
        if accept.session_id == _NO_ID:
            raise ProtocolError("ACCEPT with an empty session id")
        if accept.quiet and not self._hello_asked_quiet:
            raise ProtocolError("ACCEPT agrees to a quiet heartbeat the HELLO did not ask for")
        before = self._window.base
        replayed = self._window.rewind(accept.expect)
        self._progress = self._window.base > before
        self.session_id = accept.session_id
        self._secret = accept.secret
        self._state = S.OPEN
        self._detached_since = None
        self._quiet = accept.quiet
        if not self._learn_peer_limit(accept.max_message, now):
            return
        self.counters.handshakes += 1
        if resuming:
            self.counters.resumes += 1
        self._events.append(ev.HandshakeCompleted(self.session_id, resuming, replayed))
        # Confirm at once: the server rotates our secret and offers a new
        # session to its application only once we have spoken.
        self._output.append(encode(Ack(self._acked_upto())))

    def _on_data(self, frame: Data, now: float) -> None:
        if frame.ack:
            self._on_ack(frame.ack)
        new = self._recv.accept(frame.first_seq, frame.messages)
        if not new:
            return
        size = sum(map(len, new))
        if size > self.config.max_message_size and max(map(len, new)) > self.config.max_message_size:
            raise ProtocolError(f"a message larger than this side's max_message_size {self.config.max_message_size}")
        self._progress = True
        count = len(new)
        self.counters.messages_received += count
        self.counters.bytes_received += size
        self._events.append(ev.MessagesReceived(self._recv.expect - count, new, size))
        if self.config.ack_on_commit:
            return  # acknowledged when the application commits them
        self._recv_unacked += count
        self._recv_unacked_bytes += size
        if (
            self._recv_unacked >= self.config.ack_every
            or self._recv_unacked_bytes >= self.config.window_bytes // 4
            or self.config.ack_delay == 0
        ):
            self._ack_now = True
        elif self._ack_deadline is None:
            self._ack_deadline = now + self.config.ack_delay

    def _on_ack(self, ack: int) -> bool:
        """Free what ``ack`` covers; whether it freed anything."""
        freed = self._window.acknowledge(ack)
        if freed:
            self._progress = True
            self._events.append(ev.MessagesAcknowledged(ack, freed))
        return bool(freed)

    def _on_close(self, frame: Close, target: SessionState, now: float) -> None:
        if frame.last_seq != self._recv.expect - 1:
            raise ProtocolError(f"CLOSE after message {frame.last_seq}, but {self._recv.expect - 1} arrived")
        was = self._state
        self._state = target
        self._peer_last_seq = frame.last_seq
        self._events.append(ev.PeerClosed(frame.last_seq))
        if was is S.OPEN:
            # The peer closes first: what we queued still goes, then our
            # answer and our own CLOSE; the session ends at its CLOSE_ACK.
            self._closed_by_peer = True
            self._flush_data()
            self._output.append(encode(CloseAck(self._acked_upto())))
            self._output.append(encode(Close(self._window.next_seq - 1)))
        else:
            self._output.append(encode(CloseAck(self._acked_upto())))
        self._ack_sent()
        self._last_output = now
        if target is S.CLOSED:
            self._events.append(ev.SessionClosed(self._closed_by_peer, self._window.unacked()))

    # ------------------------------------------------------------ local API

    def _acked_upto(self) -> int:
        """What this side acknowledges: everything received, or with
        ``ack_on_commit`` only what the application committed."""
        return self._committed if self.config.ack_on_commit else self._recv.expect - 1

    @property
    def committed(self) -> int:
        """Highest received sequence number the application committed."""
        return self._committed

    def commit(self, upto: int, now: float) -> None:
        """The application is done with every received message up to ``upto``.

        With ``ack_on_commit`` this is what the peer gets acknowledged (so it
        keeps, and after a crash replays, everything not committed);
        otherwise it is only recorded.
        """
        if upto > self._recv.expect - 1:
            raise UsageError(f"can't commit message {upto}: only {self._recv.expect - 1} arrived")
        if upto <= self._committed:
            return
        delta, self._committed = upto - self._committed, upto
        if not self.config.ack_on_commit or self._state not in LIVE_STATES:
            return
        self._recv_unacked += delta
        if self._recv_unacked >= self.config.ack_every or self.config.ack_delay == 0:
            self._ack_now = True
        elif self._ack_deadline is None:
            self._ack_deadline = now + self.config.ack_delay

    @classmethod
    def restore(
        cls,
        config: SessionConfig,
        *,
        session_id: bytes,
        secret: bytes,
        unacked: list[tuple[int, bytes]],
        next_seq: int,
        committed: int,
        now: float,
        client: bool = True,
        previous_secret: bytes = b"",
        token_source: Callable[[int], bytes] = secrets.token_bytes,
    ) -> SessionEngine:
        """An engine rebuilt from durable state after a restart.

        ``unacked`` are the messages sent and not known to be acknowledged
        (consecutive, ending at ``next_seq - 1``); they count as in flight,
        so the resume handshake decides which the peer still needs.
        ``committed`` is the last received message the application
        committed: delivery resumes after it. The engine starts detached,
        with the resume window running from ``now``. A server engine
        (``client=False``) also takes the secret the client may still present
        (``previous_secret``) and waits for a resume through its registry.
        """
        engine = cls(config, client=client, session_id=session_id, secret=secret, token_source=token_source)
        engine._previous_secret = previous_secret or None
        first = unacked[0][0] if unacked else next_seq
        if [seq for seq, _ in unacked] != list(range(first, next_seq)):
            raise UsageError("restored messages must be consecutive and end at next_seq - 1")
        engine._window.restore(first, [payload for _, payload in unacked])
        engine._recv.expect = committed + 1
        engine._committed = committed
        engine._state = S.DETACHED
        engine._detached_since = now
        return engine

    def can_send(self, size: int) -> bool:
        """Whether a message of ``size`` bytes fits in the retransmit window now."""
        return self._window.has_room(size)

    def room_for(self, payloads: list[bytes] | tuple[bytes, ...]) -> int:
        """How many of ``payloads``, from the first, the window takes now."""
        return self._window.room_for(payloads)

    def check_message_size(self, size: int) -> None:
        """Raise MessageTooLarge if a message of ``size`` bytes can't be sent."""
        limit = self.max_sendable_size
        if size > limit:
            whose = "this side's" if limit == self.config.max_message_size else "the peer's"
            raise MessageTooLarge(f"message of {size} bytes exceeds {whose} max_message_size of {limit}")

    def send_message(self, payload: bytes, now: float) -> int:
        """Queue one message; return its sequence number.

        Raises WindowFull when the window has no room (the shell waits for
        :meth:`can_send` first), MessageTooLarge (over this side's or the
        peer's ``max_message_size``), or ChannelClosed / ChannelBroken once
        the session has ended or is closing.
        """
        # The one-message-per-call path applications use most: each check
        # runs in full only when the quick test says something is off.
        size = len(payload)
        if size > self._sendable_limit:
            self.check_message_size(size)
        if self._state not in _SENDABLE_STATES or self._peer_last_seq is not None:
            self.check_sendable()
        seq = self._window.push(payload)
        counters = self.counters
        counters.messages_sent += 1
        counters.bytes_sent += size
        return seq

    def send_messages(self, payloads: list[bytes] | tuple[bytes, ...], now: float) -> tuple[int, int]:
        """Queue as many of ``payloads`` as the window takes now, in order.

        Returns (sequence number of the first, how many were queued); 0
        queued when the window is full. Raises like :meth:`send_message`;
        a message over the size limit raises before anything is queued.
        """
        if payloads:
            self.check_message_size(max(map(len, payloads)))
        self.check_sendable()
        window = self._window
        fit = window.room_for(payloads)
        if fit == 0:
            return window.next_seq, 0
        batch = payloads if fit == len(payloads) else payloads[:fit]
        first = window.push_many(batch)
        self.counters.messages_sent += fit
        self.counters.bytes_sent += sum(map(len, batch))
        return first, fit

    def check_sendable(self) -> None:
        """Raise what :meth:`send_message` would for the session's state."""
        state = self._state
        if state is S.CLOSED or self._peer_last_seq is not None:
            raise ChannelClosed("the session is closed")
        if state in CLOSING_STATES:
            raise ChannelClosed("the session is closing")
        if state in TERMINAL_STATES:
            raise ChannelBroken(f"the session is {state.value}")

    def close(self, now: float) -> None:
        """Start the graceful close: send CLOSE once queued data is out.

        The session is closed once the peer has answered our CLOSE and sent
        (and had answered) its own; messages in flight either way are
        delivered and acknowledged first. Without a connection the session
        ends at once; :class:`~reliable_tcp.core.events.SessionClosed` lists what
        was not acknowledged.
        """
        state = self._state
        if state in TERMINAL_STATES or state in CLOSING_STATES:
            return
        self._move(I.CLOSE_CALLED, now)
        if state is S.OPEN:
            self._flush_data()
            if self._recv_unacked:
                # Acknowledge what arrived now rather than after the delay.
                self._output.append(encode(Ack(self._acked_upto())))
                self._ack_sent()
            self._output.append(encode(Close(self._window.next_seq - 1)))
            self._last_output = now
        else:
            self._output.clear()
            self._events.append(ev.SessionClosed(False, self._window.unacked()))

    def abort(self, now: float) -> None:
        """End the session at once, without the close handshake.

        Over a connection the peer is told (REJECT ABORTED), so its session
        ends promptly instead of waiting for a resume. Unsent output is
        dropped; :class:`~reliable_tcp.core.events.SessionClosed` (``aborted``)
        lists the messages that were not acknowledged.
        """
        state = self._state
        if state in TERMINAL_STATES:
            return
        self._move(I.ABORT_CALLED, now)
        # Only over an established connection: during a handshake the REJECT
        # would be taken for bytes sent before the answer.
        connected = state in LIVE_STATES
        self._output = [encode(Reject(RejectReason.ABORTED, "the application aborted the session"))] if connected else []
        self._events.append(ev.SessionClosed(False, self._window.unacked(), aborted=True))

    # ----------------------------------------------------------------- output

    def has_output(self) -> bool:
        """Whether :meth:`data_to_send` would return bytes."""
        return bool(self._output) or (self._state in LIVE_STATES and (self._ack_now or self._window.has_unsent))

    def _flush_data(self) -> None:
        window = self._window
        budget = self._data_frame_budget - _DATA_HEAD_SIZE
        while window.has_unsent:
            first, messages = window.take_unsent(budget, DATA_PER_MESSAGE_OVERHEAD)
            self._output.extend(encode_data_parts(first, self._acked_upto(), messages))
            self._ack_sent()

    def _ack_sent(self) -> None:
        self._recv_unacked = 0
        self._recv_unacked_bytes = 0
        self._ack_deadline = None
        self._ack_now = False

    def data_to_send(self, now: float | None = None) -> bytes:
        """Take every byte the engine wants written, as one buffer.

        DATA frames batch as many queued messages as fit in
        ``data_frame_target`` bytes (and in the peer's frame limit), each
        carrying the current cumulative ack; a separate ACK goes out only
        when no DATA does.
        """
        parts = self.data_to_send_parts(now)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def data_to_send_parts(self, now: float | None = None) -> list[bytes]:
        """:meth:`data_to_send` as a list of buffers, in order, for a writer
        that sends them without joining (large messages are not copied)."""
        if self._state in LIVE_STATES:
            self._flush_data()
            if self._ack_now:
                self._output.append(encode(Ack(self._acked_upto())))
                self._ack_sent()
        out = self._output
        if not out:
            return out
        if now is not None:
            self._last_output = now
        self._output = []
        return out

    def events_received(self) -> list[ev.Event]:
        """Take the events that happened since the last call, in order."""
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        """The next ``now`` at which :meth:`handle_timer` has work, or None."""
        state = self._state
        config = self.config
        if state in LIVE_STATES:
            deadline = min(self._last_received + config.dead_after_seconds, self._ping_due())
            if self._ack_deadline is not None:
                deadline = min(deadline, self._ack_deadline)
            return deadline
        if state in _HANDSHAKE_STATES:
            deadline = self._connected_at + config.handshake_timeout
            if self._detached_since is not None:
                deadline = min(deadline, self._detached_since + config.resume_window)
            return deadline
        if state is S.DETACHED and self._detached_since is not None:
            return self._detached_since + config.resume_window
        return None

    def _ping_due(self) -> float:
        """When this side's next PING is due (protocol section 6).

        A PING is due once nothing was sent for :meth:`ping_period` (the
        heartbeat interval, longer with the quiet heartbeat). The accepting
        side also waits until it has heard no PING for that period plus half
        an interval (``ANSWERING_SIDE_SLACK``): while the client pings, the
        server's PONGs keep both sides hearing each other, and an idle
        session costs one PING and one PONG per period instead of two each.
        A server that stops hearing PINGs (an old client, or its own reader
        paused) pings again on its own."""
        interval = self.config.heartbeat_interval
        period = self.ping_period()
        due = self._last_output + period
        if not self.client and self._heard_ping_at is not None:
            due = max(due, self._heard_ping_at + period + (ANSWERING_SIDE_SLACK - 1.0) * interval)
        return due

    def handle_timer(self, now: float) -> None:
        """Fire whatever is due at ``now``: acks, pings, dead and expiry verdicts."""
        state = self._state
        config = self.config
        expired = self._detached_since is not None and now >= self._detached_since + config.resume_window
        if expired and state in (S.DETACHED, S.RESUMING):
            self._lose(I.RESUME_EXPIRED, "resume window expired", now)
            return
        if state in _HANDSHAKE_STATES:
            if now >= self._connected_at + config.handshake_timeout:
                self._transport_failed("peer did not answer the handshake", I.PEER_DEAD, now)
            return
        if state not in LIVE_STATES:
            return
        silent = now - self._last_received
        if silent >= config.dead_after_seconds:
            self.counters.last_detection_time = silent
            self._transport_failed(f"peer unresponsive for {silent:.3f} s", I.PEER_DEAD, now)
            return
        if self._ack_deadline is not None and now >= self._ack_deadline:
            self._ack_now = True
            self._ack_deadline = None
        if now >= self._ping_due():
            self._output.append(encode(Ping(max(0, min(MAX_SEQ, int(now * 1e6))))))
            self._last_output = now
