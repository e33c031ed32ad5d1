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

from . import auth
from . import events as ev
from .config import SessionConfig
from .exceptions import (
    AuthenticationFailed,
    ChannelBroken,
    ChannelClosed,
    FrameError,
    MessageTooLarge,
    ProtocolError,
    UsageError,
)
from .frames import (
    ID_SIZE,
    MAX_SEQ,
    NONCE_SIZE,
    Accept,
    Ack,
    Challenge,
    Proof,
    Close,
    CloseAck,
    Data,
    FrameDecoder,
    Hello,
    Ping,
    Pong,
    Reject,
    RejectReason,
    encode,
    encode_data_parts,
)
from .state import TERMINAL_STATES, SessionInput, SessionState, next_state
from .window import ReceiveSequence, SendWindow, SequenceClaimError

__all__ = ["SessionEngine", "EngineCounters"]

logger = logging.getLogger(__name__)

_NO_ID = bytes(ID_SIZE)
_INPUT_OF_FRAME = {
    Hello: SessionInput.RECV_HELLO,
    Accept: SessionInput.RECV_ACCEPT,
    Reject: SessionInput.RECV_REJECT,
    Data: SessionInput.RECV_DATA,
    Ack: SessionInput.RECV_ACK,
    Ping: SessionInput.RECV_PING,
    Pong: SessionInput.RECV_PONG,
    Close: SessionInput.RECV_CLOSE,
    CloseAck: SessionInput.RECV_CLOSE_ACK,
    Challenge: SessionInput.RECV_CHALLENGE,
    Proof: SessionInput.RECV_PROOF,
}
_LIVE = (SessionState.OPEN, SessionState.CLOSING)
# The table's frame transitions by state, then frame class: one lookup per frame.
_FRAME_TARGETS: dict[SessionState, dict[type, SessionState]] = {
    state: {
        frame_type: target
        for frame_type, event in _INPUT_OF_FRAME.items()
        if (target := next_state(state, event)) is not None
    }
    for state in SessionState
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
    :class:`reliable_tcp.server_core.SessionRegistry`; a client-side engine
    starts idle and is told of each new connection with
    :meth:`connection_made`.
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
        self._state = SessionState.IDLE
        self._window = SendWindow(config.window_messages, config.window_bytes)
        self._recv = ReceiveSequence()
        self._decoder = FrameDecoder(config.max_frame_size)
        self._output: list[bytes] = []
        self._events: list[ev.Event] = []
        self.counters = EngineCounters()
        # Timers (monotonic seconds supplied by the caller).
        self._connected_at = 0.0
        self._last_received = 0.0
        self._last_output = 0.0
        self._detached_since: float | None = None
        self._ack_deadline: float | None = None
        self._ack_now = False
        self._recv_unacked = 0
        self._recv_unacked_bytes = 0
        self._peer_last_seq: int | None = None
        self._token = token_source
        self._hello_sent = b""  # the HELLO frame of this connection, for the key proof
        self._auth_nonce: bytes | None = None
        self._server_proved_key = False
        self._awaiting_confirmation = False
        self._committed = 0
        self._frame_budget = float(config.max_control_frames_per_second)
        self._budget_time = 0.0

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

    def unacked(self) -> tuple[tuple[int, bytes], ...]:
        """``(seq, payload)`` of every message the peer has not acknowledged."""
        return self._window.unacked()

    def _move(self, event: SessionInput, now: float) -> SessionState:
        target = next_state(self._state, event)
        if target is None:
            error = ProtocolError(f"{event.value} is not allowed in state {self._state.value}")
            self._fail(error, now)
            raise error
        previous, self._state = self._state, target
        if target is SessionState.DETACHED and previous is not SessionState.DETACHED:
            self._detached_since = now if self._detached_since is None else self._detached_since
            self._decoder = FrameDecoder(self.config.max_frame_size)
            self._output.clear()
            self._ack_deadline = None
            self._ack_now = False
        elif target is SessionState.OPEN:
            self._detached_since = None
        return target

    def _fail(self, error: Exception, now: float) -> None:
        """End the session because the peer broke the protocol; tell it why."""
        if self._state in TERMINAL_STATES:
            return
        logger.warning("session %s failed: %s", self.session_id.hex()[:8], error)
        if isinstance(error, SequenceClaimError):
            reason = RejectReason.BAD_SEQUENCE
        elif isinstance(error, AuthenticationFailed):
            reason = RejectReason.AUTH_FAILED
        else:
            reason = RejectReason.PROTOCOL_ERROR
        live = self._state in (SessionState.OPEN, SessionState.CLOSING, SessionState.HANDSHAKING)
        self._state = SessionState.FAILED
        self._output = [encode(Reject(reason, str(error)))] if live else []
        self._events.append(ev.SessionLost(f"protocol error: {error}", self._window.unacked(), error))

    # ------------------------------------------------------------- transport

    def connection_made(self, now: float) -> None:
        """Client: a new connection is up; queue the HELLO (new or resume)."""
        if not self.client:
            raise UsageError("connection_made is for the connecting side")
        self._move(SessionInput.CONNECTION_MADE, now)
        self._connected_at = self._last_received = self._last_output = now
        self._frame_budget, self._budget_time = float(self.config.max_control_frames_per_second), now
        resume = self.session_id != _NO_ID
        self._auth_nonce = self._token(NONCE_SIZE) if self.config.psk is not None else None
        self._server_proved_key = False
        self._hello_sent = encode(Hello(resume, self.session_id, self._secret, self._acked_upto() + 1, self._auth_nonce))
        self._output.append(self._hello_sent)

    def can_resume_from(self, expect: int) -> bool:
        """Server: whether a resume claiming ``expect`` can be satisfied."""
        return self._window.base <= expect <= self._window.send_next

    def reject_resume(self, expect: int, now: float) -> None:
        """Server: a resume claimed ``expect``, which can't be satisfied; end the session."""
        self._fail(SequenceClaimError(f"peer expects message {expect}, but only "
                                      f"{self._window.base}..{self._window.send_next} can be sent"), now)

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
            raise UsageError("attach is for the listening side")
        if self._state is SessionState.OPEN:
            self.counters.transport_failures += 1
        self._move(SessionInput.ATTACHED, now)
        replayed = self._window.rewind(hello.expect) if hello.resume else 0
        if hello.resume:
            self.counters.resumes += 1
            self._previous_secret = hello.secret
        else:
            self._awaiting_confirmation = True
        self.counters.handshakes += 1
        self._secret = new_secret
        self._reset_connection(now)
        self._output.append(encode(Accept(hello.resume, self.session_id, new_secret, self._acked_upto() + 1)))
        self._events.append(ev.HandshakeCompleted(self.session_id, hello.resume, replayed))

    def _reset_connection(self, now: float) -> None:
        self._decoder = FrameDecoder(self.config.max_frame_size)
        self._output.clear()
        self._connected_at = self._last_received = self._last_output = now
        self._frame_budget, self._budget_time = float(self.config.max_control_frames_per_second), now
        # The expectation in the handshake acknowledges everything received.
        self._ack_sent()

    def receive_eof(self, now: float) -> None:
        """The peer closed its end of the connection (``recv`` returned ``b""``)."""
        self.transport_lost(now, "connection closed by peer")

    def transport_lost(self, now: float, reason: str = "transport lost") -> None:
        """The connection is gone (reset, EOF, error); keep the session for a resume."""
        if self._state in (SessionState.IDLE, SessionState.DETACHED, *TERMINAL_STATES):
            self._move(SessionInput.TRANSPORT_LOST, now)  # nothing to drop
            return
        self.counters.transport_failures += 1
        logger.info("session %s: %s", self.session_id.hex()[:8], reason)
        was_closing = self._state is SessionState.CLOSING
        self._move(SessionInput.TRANSPORT_LOST, now)
        if was_closing:
            self._events.append(ev.SessionClosed(False, self._window.unacked()))

    def hold_liveness(self, now: float) -> None:
        """The shell stopped reading on purpose (its receive queue is full):
        the silence that follows is ours, so don't count it against the peer."""
        if self._state in _LIVE:
            self._last_received = now

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Bytes arrived on the current connection."""
        if self._state not in (SessionState.HANDSHAKING, SessionState.OPEN, SessionState.CLOSING):
            if self._state in TERMINAL_STATES:
                return
            error = ProtocolError(f"bytes received in state {self._state.value}")
            self._fail(error, now)
            raise error
        self._last_received = now
        try:
            frames = self._decoder.feed(data)
        except FrameError as exc:
            # A corrupt byte stream spoils this connection, not the session.
            self._transport_failed(f"corrupt stream: {exc}", SessionInput.TRANSPORT_LOST, now)
            return
        if (
            (self._awaiting_confirmation or self._previous_secret is not None)
            and self._state is not SessionState.HANDSHAKING
            and any(not isinstance(frame, Reject) for frame in frames)
        ):
            # Anything but a refusal sent after ACCEPT proves the client received it.
            self._previous_secret = None
            if self._awaiting_confirmation:
                self._awaiting_confirmation = False
                self._events.append(ev.PeerConfirmed())
        if len(frames) == 1:  # the common case, without a generator
            control = int(type(frames[0]) is not Data)
        else:
            control = sum(1 for frame in frames if type(frame) is not Data)
        if control and not self._spend_frame_budget(control, now):
            limit = self.config.max_control_frames_per_second
            self._fail(ProtocolError(f"more than {limit} control frames per second"), now)
            return
        for frame in frames:
            if self._state in TERMINAL_STATES:  # a frame before this one ended the session
                break
            try:
                self._handle_frame(frame, now)
            except ProtocolError as exc:
                self._fail(exc, now)
                break

    def _spend_frame_budget(self, count: int, now: float) -> bool:
        """Token bucket: refill at max_control_frames_per_second, up to one second's worth."""
        rate = self.config.max_control_frames_per_second
        self._frame_budget = min(float(rate), self._frame_budget + (now - self._budget_time) * rate)
        self._budget_time = now
        self._frame_budget -= count
        return self._frame_budget >= 0

    def _transport_failed(self, reason: str, event: SessionInput, now: float) -> None:
        self.counters.transport_failures += 1
        was_closing = self._state is SessionState.CLOSING
        self._move(event, now)
        self._events.append(ev.TransportFailed(reason))
        if was_closing:
            self._events.append(ev.SessionClosed(False, self._window.unacked()))

    # ---------------------------------------------------------------- frames

    def _handle_frame(self, frame: object, now: float) -> None:
        state = self._state
        target = _FRAME_TARGETS[state].get(type(frame))
        if target is None:
            event = _INPUT_OF_FRAME[type(frame)]
            raise ProtocolError(f"{event.value} frame is not allowed in state {state.value}")
        if isinstance(frame, Data):
            self._on_data(frame, now)
        elif isinstance(frame, Ack):
            self._on_ack(frame.ack)
        elif isinstance(frame, Ping):
            self._output.append(encode(Pong(frame.token)))
        elif isinstance(frame, Pong):
            rtt = max(0.0, now - frame.token / 1e6)
            self.counters.last_rtt = rtt
            self._events.append(ev.PongReceived(rtt))
        elif isinstance(frame, Accept):
            self._on_accept(frame, now)
            return
        elif isinstance(frame, Challenge):
            self._on_challenge(frame)
        elif isinstance(frame, Reject):
            self._state = target
            self._output.clear()
            self._events.append(ev.SessionLost(f"rejected by peer: {frame.reason.name} {frame.text}".strip(), self._window.unacked()))
            return
        elif isinstance(frame, Close):
            self._on_close(frame, now)
        elif isinstance(frame, CloseAck):
            self._on_ack(frame.ack)
            self._state = target
            self._events.append(ev.SessionClosed(False, self._window.unacked()))
            return
        self._state = target

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
        resuming = self.session_id != _NO_ID
        if accept.resumed != resuming or (resuming and accept.session_id != self.session_id):
            raise ProtocolError("ACCEPT does not answer the HELLO that was sent")
        if accept.session_id == _NO_ID:
            raise ProtocolError("ACCEPT with an empty session id")
        replayed = self._window.rewind(accept.expect)
        self.session_id = accept.session_id
        self._secret = accept.secret
        self._state = SessionState.OPEN
        self._detached_since = None
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
        if self._peer_last_seq is not None:
            raise ProtocolError("DATA after the peer's CLOSE")
        count = len(new)
        self.counters.messages_received += count
        size = sum(map(len, new))
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

    def _on_ack(self, ack: int) -> None:
        freed = self._window.acknowledge(ack)
        if freed:
            self._events.append(ev.MessagesAcknowledged(ack, freed))

    def _on_close(self, frame: Close, now: float) -> None:
        if frame.last_seq != self._recv.expect - 1:
            raise ProtocolError(f"CLOSE after message {frame.last_seq}, but {self._recv.expect - 1} arrived")
        self._peer_last_seq = frame.last_seq
        self._flush_data()
        self._output.append(encode(CloseAck(self._acked_upto())))
        self._events.append(ev.PeerClosed(frame.last_seq))
        if self._state is SessionState.OPEN:
            self._events.append(ev.SessionClosed(True, self._window.unacked()))

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
        if not self.config.ack_on_commit or self._state not in _LIVE:
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
        engine._state = SessionState.DETACHED
        engine._detached_since = now
        return engine

    def can_send(self, size: int) -> bool:
        """Whether a message of ``size`` bytes fits in the retransmit window now."""
        return self._window.has_room(size)

    def send_message(self, payload: bytes, now: float) -> int:
        """Queue one message; return its sequence number.

        Raises WindowFull when the window has no room (the shell waits for
        :meth:`can_send` first), MessageTooLarge, or ChannelClosed /
        ChannelBroken once the session has ended or is closing.
        """
        if len(payload) > self.config.max_message_size:
            raise MessageTooLarge(f"message of {len(payload)} bytes exceeds max_message_size {self.config.max_message_size}")
        self._check_sendable()
        seq = self._window.push(payload)
        if seq > MAX_SEQ:  # pragma: no cover - 2**64 messages
            raise ChannelBroken("sequence numbers exhausted")
        self.counters.messages_sent += 1
        self.counters.bytes_sent += len(payload)
        return seq

    def send_messages(self, payloads: list[bytes] | tuple[bytes, ...], now: float) -> tuple[int, int]:
        """Queue as many of ``payloads`` as the window takes now, in order.

        Returns (sequence number of the first, how many were queued); 0
        queued when the window is full. Raises like :meth:`send_message`;
        a message over the size limit raises before anything is queued.
        """
        if payloads and max(map(len, payloads)) > self.config.max_message_size:
            raise MessageTooLarge(f"a message exceeds max_message_size {self.config.max_message_size}")
        self._check_sendable()
        window = self._window
        fit = window.room_for(payloads)
        if fit == 0:
            return window.next_seq, 0
        batch = payloads if fit == len(payloads) else payloads[:fit]
        first = window.push_many(batch)
        self.counters.messages_sent += fit
        self.counters.bytes_sent += sum(map(len, batch))
        return first, fit

    def _check_sendable(self) -> None:
        state = self._state
        if state is SessionState.CLOSED or self._peer_last_seq is not None:
            raise ChannelClosed("the session is closed")
        if state is SessionState.CLOSING:
            raise ChannelClosed("the session is closing")
        if state in TERMINAL_STATES:
            raise ChannelBroken(f"the session is {state.value}")

    def close(self, now: float) -> None:
        """Start the graceful close: send CLOSE once queued data is out.

        Unacknowledged messages are still delivered if the connection holds;
        the final :class:`~reliable_tcp.events.SessionClosed` lists any that
        were not.
        """
        state = self._state
        if state in TERMINAL_STATES or state is SessionState.CLOSING:
            return
        self._move(SessionInput.CLOSE_CALLED, now)
        if state is SessionState.OPEN:
            self._flush_data()
            if self._recv_unacked:
                # The peer stops listening for acks once it has answered CLOSE:
                # acknowledge what arrived, or it would report those messages lost.
                self._output.append(encode(Ack(self._acked_upto())))
                self._ack_sent()
            self._output.append(encode(Close(self._window.next_seq - 1)))
            self._last_output = now
        else:
            self._output.clear()
            self._events.append(ev.SessionClosed(False, self._window.unacked()))

    # ----------------------------------------------------------------- output

    def has_output(self) -> bool:
        """Whether :meth:`data_to_send` would return bytes."""
        return bool(self._output) or (
            self._state in _LIVE and (self._ack_now or self._window.has_unsent)
        )

    def _flush_data(self) -> None:
        window = self._window
        target = self.config.data_frame_target
        while window.has_unsent:
            first, messages = window.take_unsent(target)
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
        ``data_frame_target`` bytes, each carrying the current cumulative
        ack; a separate ACK goes out only when no DATA does.
        """
        if self._state in _LIVE:
            self._flush_data()
            if self._ack_now:
                self._output.append(encode(Ack(self._acked_upto())))
                self._ack_sent()
        if not self._output:
            return b""
        if now is not None:
            self._last_output = now
        out = self._output[0] if len(self._output) == 1 else b"".join(self._output)
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
        if state in _LIVE:
            deadlines = [
                self._last_received + config.dead_after_seconds,
                self._last_output + config.heartbeat_interval,
            ]
            if self._ack_deadline is not None:
                deadlines.append(self._ack_deadline)
            return min(deadlines)
        if state is SessionState.HANDSHAKING:
            deadline = self._connected_at + config.handshake_timeout
            if self._detached_since is not None:
                deadline = min(deadline, self._detached_since + config.resume_window)
            return deadline
        if state is SessionState.DETACHED and self._detached_since is not None:
            return self._detached_since + config.resume_window
        return None

    def handle_timer(self, now: float) -> None:
        """Fire whatever is due at ``now``: acks, pings, dead and expiry verdicts."""
        state = self._state
        config = self.config
        if state in (SessionState.DETACHED, SessionState.HANDSHAKING):
            if self._detached_since is not None and now >= self._detached_since + config.resume_window:
                self._move(SessionInput.RESUME_EXPIRED, now)
                self._output.clear()
                self._events.append(ev.SessionLost("resume window expired", self._window.unacked()))
                return
            if state is SessionState.HANDSHAKING and now >= self._connected_at + config.handshake_timeout:
                self._transport_failed("peer did not answer the handshake", SessionInput.PEER_DEAD, now)
            return
        if state not in _LIVE:
            return
        silent = now - self._last_received
        if silent >= config.dead_after_seconds:
            self.counters.last_detection_time = silent
            self._transport_failed(f"peer unresponsive for {silent:.3f} s", SessionInput.PEER_DEAD, now)
            return
        if self._ack_deadline is not None and now >= self._ack_deadline:
            self._ack_now = True
            self._ack_deadline = None
        if now - self._last_output >= config.heartbeat_interval:
            self._output.append(encode(Ping(max(0, min(MAX_SEQ, int(now * 1e6))))))
            self._last_output = now
