"""The session policy both front ends share, sans-I/O.

Every decision the threaded and the asyncio front make the same way lives
here; each front's ``_session.py`` only waits and moves bytes. A front
passes in what it saw (bytes through the engine, a connection that opened
or ended, the clock, what a look at the socket found) and carries out the
actions returned, in order:

- :class:`Deliver`: messages for the receive queue;
- :class:`Acknowledged`: senders may go on; a durable session journals the ack;
- :class:`Persist`: journal the session's id and secrets, then call
  :meth:`SessionPolicy.persisted` (output is held until then);
- :class:`Confirmed`: the peer confirmed the session (a listener offers it now);
- :class:`DropLink`: close a connection that no longer holds the session;
- :class:`Notify`: an event for ``on_event``;
- :class:`Ended`: the session ended (recorded once): wake everyone, journal
  the end, report it;
- :data:`OUTPUT`: the engine has bytes for the connection;
- :data:`CHANGED`: the connection or the state changed (wake waiters).

Rules kept here, one place each:
- which connection holds the session: a resume older than the current
  connection may not take it over (:meth:`SessionPolicy.open_link`);
- a durable session's new secret is journaled before any frame carrying or
  confirming it leaves (:attr:`SessionPolicy.output_allowed`);
- what a lost connection costs (counters, the "disconnected" event, only
  while the session still runs);
- the liveness verdict: when to look at the socket, and what counts as proof
  that a silent peer is alive (:meth:`SessionPolicy.liveness_check`,
  :meth:`SessionPolicy.timers_due`);
- the end, recorded once and chained to the last connection failure.

Nothing here locks: the threaded front calls it under its lock, the asyncio
front on its loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from ..core import events as ev
from ..core.engine import SessionEngine
from ..core.frames import Hello, ReceiveBuffer, RejectReason, retry_after
from ..core.state import LIVE_STATES, TERMINAL_STATES
from ..exceptions import ChannelClosed, HandshakeRejected, RejectedByPeer, ReliableTCPError, SessionHandedOver, UsageError
from .backoff import Backoff, is_retryable
from .ending import EndKind, Ending, first_handshake_error
from .sockets import link_error_reason
from .status import ChannelEvent, EventKind, channel_state_of

__all__ = [
    "SessionPolicy", "Action", "Deliver", "Acknowledged", "Persist", "Confirmed", "DropLink", "Notify", "Ended",
    "Wake", "OUTPUT", "CHANGED", "LivenessCheck", "LivenessEvidence", "ProbedLink", "gather_evidence",
]

logger = logging.getLogger(__name__)

#: A front's connection object (the session only keeps it, never uses it).
L = TypeVar("L")


@dataclass(frozen=True, slots=True)
class Deliver:
    """Messages for the receive queue (``nbytes`` in all)."""

    messages: tuple[bytes, ...]
    nbytes: int


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """The peer acknowledged everything up to ``ack``: senders may go on."""

    ack: int


@dataclass(frozen=True, slots=True)
class Persist:
    """Journal the session's id and secrets, then call :meth:`SessionPolicy.persisted`."""


@dataclass(frozen=True, slots=True)
class Confirmed:
    """The peer confirmed the session."""


@dataclass(frozen=True, slots=True)
class DropLink:
    """Close ``link``, which no longer holds the session (``abort``: with RST)."""

    #: The front's connection object, as the front gave it (Any, not a type
    #: variable: mypyc compiles neither a generic dataclass nor one field
    #: annotated ``object``).
    link: Any
    abort: bool


@dataclass(frozen=True, slots=True)
class Notify:
    """An event for ``on_event``."""

    event: ChannelEvent


@dataclass(frozen=True, slots=True)
class Ended:
    """The session ended; ``final`` is the closed or failed event (None if
    nobody listens)."""

    ending: Ending
    final: ChannelEvent | None


@dataclass(frozen=True, slots=True)
class Wake:
    """A wake-up with no data: :data:`OUTPUT` or :data:`CHANGED`."""

    name: str


#: The engine has bytes to send.
OUTPUT = Wake("output")
#: The connection or the session's state changed.
CHANGED = Wake("changed")

Action = Deliver | Acknowledged | Persist | Confirmed | DropLink | Notify | Ended | Wake


@dataclass(frozen=True, slots=True)
class LivenessCheck:
    """What the front reads from the current connection before the timers
    fire (system calls, so the threaded front makes them outside its lock)."""

    #: Read the socket's pending error (once per heartbeat interval).
    read_error: bool
    #: The dead verdict is near: ask the kernel whether the peer is there
    #: (when the peer last acknowledged our bytes if reading is paused,
    #: otherwise whether bytes wait unread).
    judge: bool
    #: Reading is paused on purpose (the receive queue is full).
    reading_paused: bool
    #: The connection has the quiet heartbeat (protocol.md 6.1): ask both
    #: whether bytes wait and when the peer's kernel last acknowledged ours.
    quiet: bool = False


class ProbedLink(Protocol):
    """What a front's connection tells about its socket (both fronts' links)."""

    def pending_error(self) -> OSError | None:
        """The error the kernel holds for the socket, if any (reading it clears it)."""

    def seconds_since_peer_ack(self) -> float | None:
        """Seconds since the peer's kernel last acknowledged our bytes (None: unknown)."""

    def has_pending_input(self) -> bool:
        """Whether received bytes wait unread (in the kernel or the front's backlog)."""


@dataclass(frozen=True, slots=True)
class LivenessEvidence:
    """What the socket said when the timers fired (see :class:`LivenessCheck`)."""

    error: OSError | None = None
    peer_ack_age: float | None = None
    input_waiting: bool = False


def gather_evidence(link: ProbedLink | None, check: LivenessCheck) -> LivenessEvidence:
    """Read from ``link`` what ``check`` asks for (system calls: the threaded
    front calls this outside its lock)."""
    if link is None:
        return LivenessEvidence()
    error = link.pending_error() if check.read_error else None
    if not check.judge:
        return LivenessEvidence(error)
    if check.reading_paused:
        return LivenessEvidence(error, peer_ack_age=link.seconds_since_peer_ack())
    if check.quiet:
        return LivenessEvidence(error, peer_ack_age=link.seconds_since_peer_ack(), input_waiting=link.has_pending_input())
    return LivenessEvidence(error, input_waiting=link.has_pending_input())


class SessionPolicy(Generic[L]):
    """One session's shared bookkeeping around its engine.

    It owns the engine and the facts both fronts keep about the session:
    whether it was ever connected, how often and since when it is
    disconnected, whether it is closing or stopping, its end. The fronts
    own their connection objects; the session only holds the current one
    (``link``) and its order.
    """

    def __init__(
        self,
        engine: SessionEngine,
        name: str,
        *,
        durable: bool,
        restored: bool,
        wants_events: bool,
        proving_time: float = Backoff().maximum,
    ) -> None:
        self.engine = engine
        self._name = name  # the channel's name in logs
        self._restored = restored
        self.config = engine.config
        self._durable = durable
        self._wants_events = wants_events
        #: A restored server session was connected before the restart; a
        #: restored client waits in connect() for its resume like any first one.
        self.ever_connected = restored and not engine.client
        #: close() began: no more sends.
        self.closing = False
        #: No more connections (the end, or a teardown).
        self.stopping = False
        self.ending: Ending | None = None
        self.handed_over: str | None = None  # see hand_over()
        self.close_reported = False  # see close_report()
        self.last_cause: BaseException | None = None
        self.disconnects = 0
        self.failed_attempts = 0
        self.last_recovery: float | None = None
        self._disconnected_at: float | None = None
        #: A durable session's new secret is not journaled yet.
        self._output_held = False
        #: Connections that proved themselves: carried data, or held the
        #: session at least ``proving_time`` (the backoff's longest delay).
        #: Only such a one restarts the reconnect backoff when it is lost,
        #: so a path that takes the handshake and dies at once (a flapping
        #: Wi-Fi, a broken middlebox) is retried no faster than a dead one.
        self.proven_links = 0
        self._proving_time = proving_time
        self._link_opened_at: float | None = None  # the current connection's handshake completed then
        self._link_moved_data = False
        #: The server's last refusal asked to come back no sooner than
        #: (monotonic time, the hint in seconds): see attempt_delay().
        self._retry_hint: tuple[float, float] | None = None
        #: The connection that holds the session.
        self.link: L | None = None
        self._link_order = 0
        self._next_probe = 0.0
        # The quiet heartbeat's one extra interval (timers_due): the moment
        # up to which the last such hold counted the peer as heard.
        self._quiet_hold: float | None = None
        self._timer_due: float | None = None

    @property
    def ended(self) -> bool:
        """The end is recorded."""
        return self.ending is not None

    @property
    def output_allowed(self) -> bool:
        """The engine's output may leave: not while a new secret waits for
        the journal (unless the session ended: its last frames carry none)."""
        return self.ending is not None or not self._output_held

    def receipt(self, seq: object) -> bool | None:
        """Where message ``seq`` stands: True once the peer acknowledged it,
        False while it still may, None if the session ended without it (the
        end's exception says what was lost). UsageError for a number that
        was never sent (``send`` returns the numbers, from 1)."""
        if type(seq) is not int:  # `object`, not `int`: the compiled build would take True as 1
            raise UsageError(f"a message's sequence number is an int, not {type(seq).__name__}")
        sent = self.engine.next_seq - 1
        if not 1 <= seq <= sent:
            raise UsageError(f"message {seq} was never sent (sent so far: {sent})")
        if self.engine.acked_seq >= seq:
            return True
        return None if self.ending is not None else False

    @property
    def _settled(self) -> bool:
        """Nothing more happens to the session here: it ended, or a drain
        handed it over (no timers, no verdicts)."""
        return self.ending is not None or self.handed_over is not None

    def hand_over(self, reason: str) -> None:
        """A draining listener left the session in its journal for the
        restarted listener: this process's channel is done with it (its
        calls raise SessionHandedOver with ``reason``); the session is not ended."""
        self.handed_over = reason

    def raise_if_closed(self) -> None:
        """Raise what a send or receive meets once the channel ended or closes."""
        if self.ending is not None:
            raise self.ending.exception()
        if self.handed_over is not None:
            raise SessionHandedOver(self.handed_over)
        if self.closing:
            raise ChannelClosed("the channel is closing")

    def close_report(self) -> ReliableTCPError | None:
        """What close() raises once it returns: the SessionLost of an end
        that left messages unacknowledged, the first time only (later calls
        return quietly; send, recv and flush keep raising it)."""
        reported, self.close_reported = self.close_reported, True
        if reported or self.ending is None or not self.ending.reportable:
            return None
        return self.ending.exception()

    def event(self, kind: EventKind, detail: str = "", replayed: int = 0) -> ChannelEvent | None:
        """The event as of now (the state it reports is read now), or None
        if nobody listens."""
        if not self._wants_events:
            return None
        return ChannelEvent(kind, channel_state_of(self.engine.state, self.ever_connected), detail, replayed)

    def _notify(self, actions: list[Action], kind: EventKind, detail: str = "", replayed: int = 0) -> None:
        event = self.event(kind, detail, replayed)
        if event is not None:
            actions.append(Notify(event))

    # ------------------------------------------------------------ connections

    def open_link(
        self, link: L, now: float, *, order: int = 0, hello: Hello | None = None, new_secret: bytes = b""
    ) -> tuple[list[Action], HandshakeRejected | None]:
        """``link`` is ready to carry the session.

        Connecting side: the engine sends its HELLO. Listening side: a new
        session's engine was attached by the registry; for a resume
        (``hello``) the engine checks the secret and the claim, and a resume
        older (``order``) than the current connection is refused, so a
        stale reconnect from an accept backlog can't take a session over.

        Returns the actions and, if the connection may not have the session,
        the refusal for the listener to send (a stopping client's new
        connection is refused too: the front closes it). A refused
        connection never held the session; the actions still count (an
        impossible claim ends the session). When the connection is taken,
        the actions start with a :class:`DropLink` if another one held it.
        """
        actions: list[Action] = []
        if self.stopping:
            return actions, HandshakeRejected(RejectReason.SESSION_UNKNOWN, "no such session")
        if hello is not None:
            if self.link is not None and self._link_order > order:
                return actions, HandshakeRejected(RejectReason.SESSION_UNKNOWN, "a newer connection holds this session")
            try:
                self.engine.resume(hello, new_secret, now)
            except HandshakeRejected as refusal:
                self._absorb(now, actions)  # an impossible claim ends the session
                return actions, refusal
        elif self.engine.client:
            self.engine.connection_made(now)
        if self.link is not None:
            actions.append(DropLink(self.link, abort=True))  # replaced: the engine already moved to the new connection
        self.link = link
        self._link_order = order
        self._next_probe = now + self.config.heartbeat_interval
        if self._durable and not self.engine.client:
            self._output_held = True  # the secret in this ACCEPT is durable before it leaves
            actions.append(Persist())
        self._absorb(now, actions)
        actions.append(CHANGED)
        return actions, None

    def link_lost(self, link: L, now: float, reason: str, cause: BaseException | None, *, abort: bool) -> list[Action]:
        """``link`` is dropped by the front (nothing if it no longer holds
        the session)."""
        actions: list[Action] = []
        if link is self.link:
            self._link_lost(now, reason, cause, abort, actions)
        return actions

    def link_ended(self, link: L, now: float, error: BaseException | None, reason: str = "") -> list[Action]:
        """``link`` failed (``error``) or saw the peer's EOF. Its socket is
        reset if it failed, closed in order otherwise; ``reason`` (else one
        made from the error) is what the disconnected event says."""
        if not reason:
            reason = (link_error_reason(error) or str(error)) if error is not None else "connection closed by peer"
        return self.link_lost(link, now, reason, error, abort=error is not None)

    def _link_lost(self, now: float, reason: str, cause: BaseException | None, abort: bool, actions: list[Action]) -> None:
        link = self.link
        if link is None:
            return
        self.link = None
        actions.append(DropLink(link, abort=abort))
        opened_at, self._link_opened_at = self._link_opened_at, None
        if opened_at is not None and (self._link_moved_data or now - opened_at >= self._proving_time):
            self.proven_links += 1
        if cause is not None:
            self.last_cause = cause
        if self.engine.state not in TERMINAL_STATES:
            self.engine.transport_lost(now, reason)
            self.disconnects += 1
            if self._disconnected_at is None:
                self._disconnected_at = now
            if not self.stopping:
                logger.info("%s: disconnected: %s", self._name, reason)
                self._notify(actions, EventKind.DISCONNECTED, reason)
        self._absorb(now, actions)
        actions.append(CHANGED)

    def first_handshake_error(self, address: object) -> BaseException | None:
        """Why connect() gives no channel, as a fresh exception, or None once
        the first handshake is done (``common.ending.first_handshake_error``)."""
        if self.ever_connected:
            return None
        return first_handshake_error(self.ending, restored=self._restored, address=address, last_cause=self.last_cause)

    def attempt_delay(self, now: float, backoff_delay: float, draw: float) -> float:
        """How long the connector waits before its next attempt: the
        backoff's delay, or longer if the server's last refusal carried a
        hint (docs/protocol.md 3, "Retry hint"): then not before the hint
        has passed, plus up to a quarter of it more (``draw``, uniform in
        [0, 1)), so that clients refused together do not return together.
        A hint counts for one attempt."""
        hint, self._retry_hint = self._retry_hint, None
        if hint is None:
            return backoff_delay
        not_before, seconds = hint
        return max(backoff_delay, not_before - now + seconds * draw / 4)

    def connect_failed(self, now: float, error: BaseException, reason: str) -> list[Action]:
        """A connection attempt failed. One not worth retrying (a refused
        name or a certificate before the first session: ``is_retryable``)
        ends the session as broken; any end that comes later is chained to
        the last failure."""
        self.last_cause = error
        self.failed_attempts += 1
        actions: list[Action] = [CHANGED]
        if self.ending is None and not is_retryable(error, reconnect=self.ever_connected):
            self.engine.close(now)
            self.engine.events_received()  # the close's own events: the end below says it all
            self._end(Ending.of(EndKind.BROKEN, reason, self.engine.unacked(), error), actions)
        return actions

    def received(self, link: L, data: bytes | memoryview | ReceiveBuffer, now: float) -> list[Action]:
        """Bytes arrived on ``link`` (ignored unless it holds the session)."""
        actions: list[Action] = []
        if link is self.link and self.ending is None:
            self.engine.receive_data(data, now)
            self._absorb(now, actions)
        return actions

    def persisted(self, error: ReliableTCPError | None) -> list[Action]:
        """The journal took the session record (or refused it: the session breaks)."""
        actions: list[Action] = []
        if error is not None:
            reason = f"the journal refused the session record: {error}"
            self._end(Ending.of(EndKind.BROKEN, reason, self.engine.unacked(), error), actions)
        self._output_held = False
        actions.append(OUTPUT)
        return actions

    def close(self, now: float) -> list[Action]:
        """close() began: no more sends; CLOSE goes behind what is queued."""
        self.closing = True
        actions: list[Action] = [CHANGED]
        if self.ending is None:
            self.engine.close(now)
            self._absorb(now, actions)
        return actions

    def close_timed_out(self, now: float) -> list[Action]:
        """The close handshake did not finish in time: the session ends here.
        The connection closes in order (FIN), so the peer still reads our CLOSE."""
        actions: list[Action] = []
        self._link_lost(now, "close timed out", None, False, actions)
        self._end(Ending.of(EndKind.CLOSED, "close timed out", self.engine.unacked(), None), actions)
        return actions

    def stop(self) -> None:
        """No more connections (a teardown)."""
        self.stopping = True

    def release_link(self) -> L | None:
        """A teardown takes the current connection away (the session ended or
        is put aside unchanged: nothing is counted)."""
        link, self.link = self.link, None
        return link

    def end(self, ending: Ending) -> list[Action]:
        """End the session now (a local failure, a journal that says it was lost)."""
        actions: list[Action] = []
        self._end(ending, actions)
        return actions

    def absorb(self, now: float) -> list[Action]:
        """Act on what the engine did since the last call (after the front
        drove it directly: a send, a close)."""
        actions: list[Action] = []
        self._absorb(now, actions)
        return actions

    # ------------------------------------------------------------- the engine

    def _absorb(self, now: float, actions: list[Action]) -> None:
        engine = self.engine
        for event in engine.events_received():
            if isinstance(event, ev.MessagesReceived):
                self._link_moved_data = True
                actions.append(Deliver(event.messages, event.nbytes))
            elif isinstance(event, ev.MessagesAcknowledged):
                self._link_moved_data = True
                actions.append(Acknowledged(event.ack))
            elif isinstance(event, ev.HandshakeCompleted):
                self._handshake_completed(event, now, actions)
            elif isinstance(event, ev.PeerConfirmed):
                actions.append(Confirmed())
            elif isinstance(event, ev.TransportFailed):
                if isinstance(event.error, RejectedByPeer) and (hint := retry_after(event.error.reason, event.error.text)):
                    self._retry_hint = (now + hint, hint)
                self._link_lost(now, event.reason, event.error, True, actions)
            elif (ending := Ending.of_event(event)) is not None:
                self._end(ending, actions)
        if engine.has_output():
            actions.append(OUTPUT)

    def _handshake_completed(self, event: ev.HandshakeCompleted, now: float, actions: list[Action]) -> None:
        if self._durable and self.engine.client:
            self._output_held = True  # the new secret is durable before the confirming ACK leaves
            actions.append(Persist())
        first_connection = not self.ever_connected
        self.ever_connected = True
        self._link_opened_at, self._link_moved_data = now, False
        actions.append(CHANGED)
        if event.resumed:
            if self._disconnected_at is not None:
                self.last_recovery = now - self._disconnected_at
            logger.info("%s: session resumed, %d messages replayed", self._name, event.replayed)
            self._notify(actions, EventKind.RESUMED, replayed=event.replayed)
        elif first_connection:
            self._notify(actions, EventKind.CONNECTED, self.engine.session_id.hex())
        self._disconnected_at = None

    def _end(self, ending: Ending, actions: list[Action]) -> None:
        if self.ending is not None:
            return
        self.ending = ending = ending.with_cause(self.last_cause)
        self.stopping = True
        self._timer_due = None
        if ending.failed:
            logger.warning("%s: %s (%d unacknowledged)", self._name, ending.reason, len(ending.unacked))
        actions.append(Ended(ending, self.event(EventKind.FAILED if ending.failed else EventKind.CLOSED, ending.reason)))
        actions.append(CHANGED)

    # ----------------------------------------------------------------- timers

    def next_timer(self) -> float | None:
        """When the front's timer must fire, if that is new (sooner than
        what it holds); None: keep the one it has, or none after the end
        (or once a drain handed the session over: it is inert here)."""
        if self._settled:
            return None
        due = self.engine.next_deadline()
        if due is None or (self._timer_due is not None and due >= self._timer_due):
            return None
        self._timer_due = due
        return due

    def liveness_check(self, now: float, *, reading_paused: bool) -> LivenessCheck | None:
        """The front's timer fired at ``now``: what to read from the current
        connection before :meth:`timers_due`; None if nothing is due yet
        (the front asks :meth:`next_timer` again).

        The socket's pending error is read once per heartbeat interval (the
        seed's zero-byte send): an error the kernel already holds (a reset,
        a keepalive timeout) becomes a verdict at once, even while reading
        is paused and no read would meet it. An error is reported once, to
        whoever reads it first, so the front drops the link on it. The peer's liveness is
        asked when the dead verdict is due: a peer whose bytes wait unread
        (a starved reader) or whose kernel still acknowledges ours (reading
        paused on purpose) is alive.
        """
        self._timer_due = None
        engine = self.engine
        due = engine.next_deadline()
        if self._settled or due is None or due > now:
            return None
        if self.link is None:
            return LivenessCheck(False, False, reading_paused)
        config = self.config
        read_error = now >= self._next_probe
        if read_error:
            self._next_probe = now + config.heartbeat_interval
        judge = engine.state in LIVE_STATES and engine.silence(now) >= config.dead_after_seconds
        return LivenessCheck(read_error, judge, reading_paused, engine.quiet_heartbeat)

    def _hold_quiet(self, now: float, peer_ack_age: float | None) -> None:
        """The quiet heartbeat leaves one interval of slack before the
        verdict where the classic one leaves two (protocol.md 6.1). When
        the peer's kernel acknowledged our bytes within ``dead_after``, the
        peer is probably only slow (its loop or threads behind, as when
        10,000 sessions start sending at once): give it that second
        interval back, once per silence. Only once: a kernel acknowledgement
        proves the next TCP hop, which behind a relay is not the peer."""
        config = self.config
        if peer_ack_age is None or peer_ack_age >= config.dead_after_seconds:
            return
        heard = now - self.engine.silence(now)  # the peer's last byte, or the last hold
        if self._quiet_hold is not None and heard <= self._quiet_hold:
            return  # this silence had its extra interval already
        self._quiet_hold = heard + config.heartbeat_interval
        self.engine.hold_liveness(now, min(now - peer_ack_age, self._quiet_hold))

    def timers_due(self, now: float, check: LivenessCheck, link: L | None, evidence: LivenessEvidence) -> list[Action]:
        """Fire what is due at ``now`` with what ``link`` said (``evidence``;
        ignored if another connection holds the session by now).

        The verdict is given at the moment the link was judged, never at a
        later reading of the clock: a silence just short of dead_after then
        (so nothing was read) must not become a verdict unprobed a few
        microseconds on. Whatever falls due meanwhile is the next timer's.
        """
        actions: list[Action] = []
        if self._settled:
            return actions
        if link is None or link is not self.link:
            evidence = LivenessEvidence()
        if evidence.error is not None:
            error = evidence.error
            self._link_lost(now, link_error_reason(error) or str(error), error, True, actions)
        elif check.judge and self.link is not None:
            if check.reading_paused:
                # We stopped reading on purpose, so what waits in the kernel may
                # be old; but the peer's kernel acknowledges our pings as long
                # as the peer is there at all.
                age = evidence.peer_ack_age
                self.engine.hold_liveness(now, now if age is None else now - age)
            elif evidence.input_waiting:
                self.engine.hold_liveness(now)  # bytes wait in the kernel: only our reader is late
            elif check.quiet:
                self._hold_quiet(now, evidence.peer_ack_age)
        self.engine.handle_timer(now)
        self._absorb(now, actions)
        return actions
