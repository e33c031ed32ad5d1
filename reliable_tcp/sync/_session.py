"""The machinery under a channel: one engine, its connections, timers, events and end.

:class:`SessionShell` keeps one session engine connected and fed: it owns
the one lock, starts and drops connections (``_link.Link``), fires the
engine's timers when the shared timer thread calls it, turns the engine's
events into the receive queue, wake-ups and callbacks, and records the
session's end once. :class:`~reliable_tcp.sync.channel.Channel` adds the API
the application calls; ``client.ClientChannel`` adds the connecting
side's door for its reconnect loop. See docs/design.md.

Lock rules: ``self._lock`` guards the engine and every attribute marked
``lock``. Nothing under it blocks on I/O or calls user code, with one
exception, commented where it happens: a durable send appends its journal
record under the lock, so that a message is journaled exactly when it is
queued. Socket closes, journal writes and callbacks are queued in
``self._after`` while the lock is held and run once it is released
(``with self._locked:`` does both). Helpers that need the lock assert it.
The inbox's lock nests inside it; the listener's is never held with it.
"""

from __future__ import annotations

import functools
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..common.consumer import ConsumerRule
from ..common.ending import Ending, Unacked
from ..common.options import ShellOptions
from ..common.sockets import link_error_reason
from ..common.status import ChannelEvent, channel_state_of
from ..core import events as ev
from ..core.engine import SessionEngine
from ..core.frames import Hello, RejectReason
from ..core.state import LIVE_STATES, TERMINAL_STATES
from ..durable.session_journal import Durable
from ..exceptions import (
    HandshakeRejected,
    ReliableTCPError,
)
from ._deadline import Deadline
from ._inbox import Inbox
from ._link import Link
from ._timers import CALLBACKS, TIMERS
from .tls import TLSLayer

__all__ = ["SessionShell", "Connecting", "Unacked"]

logger = logging.getLogger(__name__)

#: After the session ended: how long the last frames may take to leave, and
#: the peer to answer our FIN, before the connection is cut.
_FINAL_FLUSH = 2.0
#: abort(): how long the REJECT ABORTED may take to leave.
_ABORT_FLUSH = 0.25
#: close(timeout): the share of the budget kept for the close handshake.
_HANDSHAKE_SHARE = 0.25

_ids = itertools.count(1)


class Connecting(Protocol):
    """The connecting side's reconnect loop, as the channel sees it (client.py)."""

    def stop(self) -> None:
        """Stop at once, interrupting a connection attempt."""

    def join(self, deadline: Deadline) -> bool:
        """Wait for the loop's thread; whether it ended."""


class _Locked:
    """``with channel._locked:`` holds the lock, then runs what was queued
    for after it (socket closes, journal writes, callbacks)."""

    __slots__ = ("_channel",)

    def __init__(self, channel: SessionShell) -> None:
        self._channel = channel

    def __enter__(self) -> None:
        self._channel._lock.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self._channel._lock.release()
        self._channel._run_after_lock()


class SessionShell:
    """One session engine kept connected: connections, timers, events, the end.

    It is the :class:`~reliable_tcp.sync._link.LinkOwner` of its connections and
    the :class:`~reliable_tcp.sync._timers.TimerTarget` of the timer thread.
    The doors other shell modules use: :meth:`_open_link` (attach a
    connection: client.py, server.py) and, in Channel, ``_begin_close`` /
    ``_finish_close`` (server.py).
    """

    def __init__(
        self,
        engine: SessionEngine,
        shell: ShellOptions,
        *,
        durable: Durable | None = None,
        restored: bool = False,
        on_end: Callable[[Any], None] | None = None,
        on_confirmed: Callable[[Any], None] | None = None,
    ) -> None:
        self._engine = engine  # lock
        self._config = engine.config
        self._shell = shell
        self._durable = durable
        #: True for a session brought back from a journal after a restart.
        self.restored = restored
        self._on_end = on_end
        self._on_confirmed = on_confirmed
        self._name = f"rtcp-{'client' if engine.client else 'server'}-{next(_ids)}"
        self._lock = threading.Lock()
        self._locked = _Locked(self)
        self._sendable = threading.Condition(self._lock)  # window room, acks, the end
        self._writable = threading.Condition(self._lock)  # output for the writer, a link change, the end
        self._changed = threading.Condition(self._lock)  # link or state changed
        self._inbox = Inbox(shell.max_queued_messages, shell.max_queued_bytes)
        self._committed_base = engine.committed  # what was committed before the inbox's first message
        # A durable channel's consumer: recv waits under this lock, and the
        # rule says whose uncommitted messages they are (common/consumer.py).
        self._consumer_lock = threading.Lock()
        self._consumers: ConsumerRule[threading.Thread] = ConsumerRule(threading.Thread.is_alive, lambda t: f"thread {t.name!r}")
        self._after: list[Callable[[], None]] = []  # lock
        self._link: Link | None = None  # lock: the current connection
        self._links: list[Link] = []  # lock: every link started, to join
        self._link_numbers = itertools.count(1)
        self._connector: Connecting | None = None
        self._timer_due: float | None = None  # lock: what TIMERS holds for us
        self._next_probe = 0.0  # lock: next zero-byte probe of the link
        self._output_held = False  # lock: a durable client journals its new secret first
        self._journal_order = threading.Lock()  # session records reach the journal in order
        # A restored server session was connected before the restart; a
        # restored client waits in connect() for its resume like any first handshake.
        self._ever_connected = restored and not engine.client  # lock
        self._closing = False  # lock: close() began; no more sends
        self._stopping = False  # lock: no more connections
        # The end, recorded once (lock).
        self._ended = False
        self._ending: Ending | None = None
        self._close_reported = False  # close() raised the end's SessionLost
        # Counters and timings (lock).
        self._last_cause: BaseException | None = None
        self._disconnects = 0
        self._disconnected_at: float | None = None
        self._last_recovery: float | None = None
        with self._locked:
            self._reschedule()

    @property
    def name(self) -> str:
        """The channel's name in logs and thread names (``rtcp-client-3``)."""
        return self._name

    @property
    def session_id(self) -> str:
        """The session id in hex (empty until the first handshake)."""
        session_id = self._engine.session_id
        return session_id.hex() if any(session_id) else ""

    def _end_exception(self) -> ReliableTCPError:
        """A fresh exception for the end, chained to its root cause (the lock
        may or may not be held: the end never changes once recorded)."""
        assert self._ending is not None
        return self._ending.exception()

    def _end(self, kind: str, reason: str, unacked: Unacked, cause: BaseException | None) -> None:
        """The session reached its end: record it once, wake everyone. Lock held."""
        self._record_end(Ending.of(kind, reason, unacked, cause))

    def _record_end(self, ending: Ending) -> None:
        assert self._lock.locked()
        if self._ended:
            return
        self._ended = True
        self._stopping = True
        self._ending = ending = ending.with_cause(self._last_cause)
        if ending.failed:
            logger.warning("%s: %s (%d unacknowledged)", self._name, ending.reason, len(ending.unacked))
        final = self._event("failed" if ending.failed else "closed", ending.reason)
        durable = self._durable
        if durable is None:
            self._inbox.end(self._end_exception)
            self._dispatch(final)
        else:
            # recv() and the final event report the end only once the journal
            # holds it: an application that saw the peer's close and then died
            # must not be offered the finished session again by the restart.
            def record_then_report(kind: str = ending.kind, reason: str = ending.reason) -> None:
                durable.record_end(kind, reason)
                self._inbox.end(self._end_exception)
                self._dispatch(final)

            self._after.append(record_then_report)
        for condition in (self._sendable, self._writable, self._changed):
            condition.notify_all()
        TIMERS.cancel(self)
        self._timer_due = None
        if self._on_end is not None:
            on_end = self._on_end
            self._after.append(lambda: on_end(self))

    def _end_restored(self, reason: str, unacked: Unacked) -> None:
        """A journal says this session was lost before the restart: end it
        now, so its owner is told (once) what was never acknowledged."""
        with self._locked:
            self._end("lost", reason, unacked, None)

    def _teardown(self, deadline: Deadline, *, linger: bool, reported: bool = True) -> None:
        """Stop the connector and the connections, join every thread, close
        the journal (``reported``: the owner has been told how it ended, so
        a lost session's journal can be retired)."""
        with self._locked:
            self._stopping = True
            connector = self._connector
            link = self._link
            for condition in (self._sendable, self._writable, self._changed):
                condition.notify_all()
        if connector is not None:
            connector.stop()
        if link is not None:
            if self._ended and linger:
                # An orderly end: the last frames leave, our FIN, the peer's EOF.
                final = deadline.earlier(_FINAL_FLUSH)
                link.finished.wait(final.remaining())
                link.join(final)
            with self._locked:
                if self._link is link:
                    self._link = None
                    self._inbox.interrupt()
                    self._writable.notify_all()
            link.close(abort=not link.finished.is_set())
        with self._lock:
            links = list(self._links)
        stopped = connector.join(deadline.earlier(_FINAL_FLUSH)) if connector is not None else True
        for each in links:
            stopped = each.join(deadline.earlier(_FINAL_FLUSH)) and stopped
        if not stopped:
            logger.error("%s: a thread did not stop in time", self._name)
        with self._journal_order, self._lock:  # not while a session record is being written
            self._links = [each for each in self._links if any(t.is_alive() for t in each.threads)]
            durable, self._durable = self._durable, None
            ended, kind = self._ended, self._ending.kind if self._ending is not None else ""
        if durable is not None:
            if ended:
                durable.finish(kind, reported=reported)
            else:
                durable.release()

    # -------------------------------------------------------- locking help

    def _run_after_lock(self) -> None:
        """Run what was deferred until the lock was released."""
        while self._after:
            with self._lock:
                actions, self._after = self._after, []
            for action in actions:
                try:
                    action()
                except Exception:  # a failed close or write must not kill the calling thread
                    logger.exception("%s: deferred action failed", self._name)

    def _notify(self, kind: str, detail: str = "", replayed: int = 0) -> None:
        self._dispatch(self._event(kind, detail, replayed))

    def _event(self, kind: str, detail: str = "", replayed: int = 0) -> ChannelEvent | None:
        """The event as of now (the state it reports is read now), or None
        if nobody listens."""
        if self._shell.on_event is None:
            return None
        return ChannelEvent(kind, channel_state_of(self._engine.state, self._ever_connected), detail, replayed)

    def _dispatch(self, event: ChannelEvent | None) -> None:
        callback = self._shell.on_event
        if event is not None and callback is not None:
            CALLBACKS.call(lambda: callback(event))

    def _reschedule(self) -> None:
        """Tell the timer thread when we next have work, if that is sooner. Lock held."""
        if self._ended:
            return  # cancelled for good; the engine may not know (a crash ended the channel)
        due = self._engine.next_deadline()
        if due is not None and (self._timer_due is None or due < self._timer_due):
            self._timer_due = due
            TIMERS.schedule(self, due)

    def _absorb(self, now: float) -> None:
        """Act on the engine's events and output. Lock held."""
        assert self._lock.locked()
        engine = self._engine
        for event in engine.events_received():
            if isinstance(event, ev.MessagesReceived):
                self._inbox.put(event.messages, event.nbytes)
            elif isinstance(event, ev.MessagesAcknowledged):
                self._sendable.notify_all()
                if self._durable is not None:
                    self._after.append(functools.partial(self._durable.record_acked, event.ack))
            elif isinstance(event, ev.HandshakeCompleted):
                self._on_handshake(event, now)
            elif isinstance(event, ev.PeerConfirmed) and self._on_confirmed is not None:
                self._after.append(functools.partial(self._on_confirmed, self))
            elif isinstance(event, ev.TransportFailed):
                self._drop_link(event.reason, event.error, abort=True)
            elif isinstance(event, (ev.SessionClosed, ev.SessionFailed)):
                ending = Ending.of_event(event)
                assert ending is not None
                self._record_end(ending)
        if engine.has_output():
            self._writable.notify()
        self._reschedule()

    def _on_handshake(self, event: ev.HandshakeCompleted, now: float) -> None:
        if self._durable is not None and self._engine.client:
            # The new secret is durable before the confirming ACK leaves.
            self._output_held = True
            self._after.append(self._persist_session)
        first_connection = not self._ever_connected
        self._ever_connected = True
        self._changed.notify_all()
        self._sendable.notify_all()
        if event.resumed:
            if self._disconnected_at is not None:
                self._last_recovery = now - self._disconnected_at
            logger.info("%s: session resumed, %d messages replayed", self._name, event.replayed)
            self._notify("resumed", replayed=event.replayed)
        elif first_connection:
            self._notify("connected", self.session_id)
        self._disconnected_at = None

    def _persist_session(self) -> None:
        """Journal the session's current id and secrets, then release the output."""
        with self._journal_order:  # the newest secret is the last one written; no finish meanwhile
            with self._lock:
                durable = self._durable
                engine = self._engine
                snapshot = (engine.session_id, engine.secret, engine.previous_secret)
            if durable is not None:
                try:
                    durable.record_session(*snapshot)
                except ReliableTCPError as exc:
                    with self._locked:
                        self._end("broken", f"the journal refused the session record: {exc}", self._engine.unacked(), exc)
        with self._lock:
            self._output_held = False
            self._writable.notify_all()

    # ----------------------------------------------------------- connections

    def _open_link(
        self,
        sock: Any,
        tls: TLSLayer | None = None,
        *,
        order: int = 0,
        hello: Hello | None = None,
        new_secret: bytes = b"",
    ) -> None:
        """The door for client.py and server.py: make ``sock`` the current
        connection and start its threads.

        Connecting side: the engine sends its HELLO. Listening side: a new
        session's engine was attached by the registry; for a resume
        (``hello``) the engine checks the secret and the claim here, and a
        resume older (``order``) than the current connection is refused, so
        a stale reconnect from an accept backlog can't take a session over.
        Raises HandshakeRejected (listening side).
        """
        link = Link(sock, self, tls=tls, order=order)
        with self._locked:
            if self._stopping:
                if not self._engine.client:  # the listener answers and closes
                    raise HandshakeRejected(RejectReason.SESSION_UNKNOWN, "no such session")
                self._after.append(lambda: link.close(abort=True))
                return
            current = self._link
            now = time.monotonic()
            if hello is not None:
                if current is not None and current.order > order:
                    raise HandshakeRejected(RejectReason.SESSION_UNKNOWN, "a newer connection holds this session")
                try:
                    self._engine.resume(hello, new_secret, now)
                finally:
                    self._absorb(now)  # an impossible claim ends the session
            elif self._engine.client:
                self._engine.connection_made(now)
            if current is not None:
                self._link = None  # replaced: the engine already moved to the new connection
                self._after.append(lambda: current.close(abort=True))
            self._link = link
            self._links.append(link)
            self._next_probe = now + self._config.heartbeat_interval
            self._absorb(now)
            self._changed.notify_all()
        if self._durable is not None and not self._engine.client:
            self._persist_session()  # durable before the ACCEPT can leave
        link.start(f"{self._name}-c{next(self._link_numbers)}")

    def _drop_link(self, reason: str, cause: BaseException | None, *, abort: bool) -> None:
        """Forget the current connection; its socket closes after the lock is
        released (which wakes its threads). Lock held."""
        assert self._lock.locked()
        link = self._link
        if link is None:
            return
        self._link = None
        link.closed = True  # its threads stop at their next step
        self._after.append(lambda: link.close(abort=abort))
        self._inbox.interrupt()
        self._writable.notify_all()
        self._changed.notify_all()
        now = time.monotonic()
        if cause is not None:
            self._last_cause = cause
        if self._engine.state not in TERMINAL_STATES:
            self._engine.transport_lost(now, reason)
            self._disconnects += 1
            if self._disconnected_at is None:
                self._disconnected_at = now
            if not self._stopping:
                logger.info("%s: disconnected: %s", self._name, reason)
                self._notify("disconnected", reason)
        self._absorb(now)

    # ------------------------------------------------------- link callbacks

    def link_received(self, link: Link, data: bytes | memoryview, now: float) -> bool:
        """LinkOwner: bytes arrived; returns once there is room for more."""
        direct = None
        with self._locked:
            if link is self._link:
                if data:
                    self._engine.receive_data(data, now)
                    self._absorb(now)
                    direct = self._take_direct()
                if link.tls_pending:
                    self._writable.notify()
        if direct is not None:
            self._write_direct(direct)  # an answer (PONG, ACK, a reply) without waking the writer
        # Backpressure: stop reading while the application is behind, so TCP
        # flow control slows the sender instead of our memory growing.
        self._inbox.wait_room(lambda: link.closed)
        return not link.closed

    def _take_direct(self) -> Link | None:
        """Lock held. When the writer is idle (waiting), hand the engine's
        output to the calling thread instead of waking the writer: a thread
        hand-off costs more than a non-blocking send. Not with TLS (only the
        writer encrypts) nor while output is held."""
        link = self._link
        if link is None or not link.writer_waiting or link.direct_writing or link.tls is not None or self._output_held:
            return None
        if not self._engine.has_output():
            return None
        link.pending = self._engine.data_to_send(time.monotonic())
        link.direct_writing = True
        return link

    def _write_direct(self, link: Link) -> None:
        """Outside the lock: write what :meth:`_take_direct` took, without
        blocking; whatever does not fit is left for the writer."""
        data = link.pending
        try:
            sent = link.sock.send(data, socket.MSG_DONTWAIT)
        except OSError:
            sent = 0  # full, or broken: the writer sends it, or meets the same error and reports it
        with self._lock:
            link.pending = data[sent:]
            link.direct_writing = False
            if link.pending or self._engine.has_output() or self._ended:  # (ended: the writer finishes)
                link.writer_waiting = False
                self._writable.notify_all()

    def link_output(self, link: Link) -> bytes | list[bytes] | None:
        """LinkOwner: the writer's next bytes; None once nothing more goes out."""
        with self._lock:
            engine = self._engine
            while True:
                if link is not self._link:
                    return None
                if link.direct_writing:
                    pass  # another thread is writing directly: wait for it
                elif link.pending:
                    data, link.pending = link.pending, b""  # what a direct write could not finish
                    return data
                elif (self._ended or not self._output_held) and engine.has_output():
                    return engine.data_to_send_parts(time.monotonic())
                elif link.tls_pending:
                    return b""
                elif self._ended:
                    return None  # the last frame is out
                link.writer_waiting = True  # a send must wake it; otherwise it finds the output itself
                self._writable.wait()
                link.writer_waiting = False

    def link_ended(self, link: Link, error: BaseException | None, reason: str, crashed: bool) -> None:
        """LinkOwner: the connection failed, saw EOF, or a thread crashed."""
        with self._locked:
            if crashed:
                self._end("broken", reason, self._engine.unacked(), error)
                if link is self._link:
                    self._drop_link(reason, error, abort=True)
            elif link is self._link and not self._ended:
                if not reason:
                    reason = (link_error_reason(error) or str(error)) if error is not None else "connection lost"
                self._drop_link(reason, error, abort=error is not None)

    # ---------------------------------------------------------------- timers

    def fire_timers(self, now: float) -> None:
        """TimerTarget: fire what is due (heartbeats, acks, dead and expiry
        verdicts) and schedule the next deadline. Probes run outside the lock."""
        with self._lock:
            self._timer_due = None
            if self._ended:
                return
            engine = self._engine
            due = engine.next_deadline()
            if due is None or due > now:
                self._reschedule()
                return
            link = self._link
            config = self._config
            judging = link is not None and engine.state in LIVE_STATES and engine.silence(now) >= config.dead_after_seconds
            inbox_full = self._inbox.full
            probe = link is not None and now >= self._next_probe
            if probe:
                self._next_probe = now + config.heartbeat_interval
        alive_at: float | None = None  # when the peer was last known alive, if later than its last byte
        if judging and link is not None:
            if inbox_full:
                # We stopped reading on purpose, so what waits in the kernel may
                # be old; but the peer's kernel acknowledges our pings as long
                # as the peer is there at all.
                since = link.seconds_since_peer_ack()
                alive_at = now if since is None else now - since
            elif link.has_pending_input():
                alive_at = now  # bytes wait in the kernel: only our reader is late
        pending_error = link.pending_error() if probe and link is not None else None
        with self._locked:
            if self._ended:
                return
            # The verdict is given at the moment the link was judged, never at
            # a later reading of the clock: a silence just short of dead_after
            # then (so no probe was made) must not become a verdict unprobed
            # a few microseconds on. Whatever falls due meanwhile is the next
            # deadline's, which fires at once.
            if link is not None and link is self._link:
                if pending_error is not None:
                    self._drop_link(link_error_reason(pending_error) or str(pending_error), pending_error, abort=True)
                elif alive_at is not None:
                    self._engine.hold_liveness(now, alive_at)
            self._engine.handle_timer(now)
            self._absorb(now)  # schedules the next deadline
