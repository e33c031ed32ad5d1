"""The machinery under a threaded channel: this file only waits and moves bytes.

:class:`SessionShell` keeps one session connected on threads: it owns the
one lock, starts and drops connections (``_link.Link``), asks the shared
policy (``common/session.py``, where every decision lives) what to do when
a connection reads or ends and when the timer thread fires, and carries
out the actions it returns: the receive queue, wake-ups, journal writes,
callbacks. The public :class:`~reliable_tcp.sync.channel.Channel` holds one
and carries the API; ``client.Connector`` and ``server.Listener`` use its
doors. Its attributes without an underscore are for those three; nothing
outside the package sees this class. See docs/design.md.

Lock rules: ``self.lock`` guards the engine, the policy and every attribute
marked ``lock``. Nothing under it blocks on I/O or calls user code, with one
exception, commented where it happens: a durable send appends its journal
record under the lock, so that a message is journaled exactly when it is
queued. Socket closes, journal writes and callbacks are queued in
``self._after`` while the lock is held and run once it is released
(``with self.locked:`` does both). Helpers that need the lock assert it.
The inbox's lock nests inside it; the listener's is never held with it.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..common.consumer import ConsumerRule
from ..common.ending import EndKind, Ending, Unacked
from ..common.front import SessionFront
from ..common.options import ShellOptions
from ..common.session import Ended, gather_evidence
from ..common.status import ChannelEvent, ChannelState, ChannelStatistics
from ..common.timing import FINAL_FLUSH
from ..core.engine import SessionEngine
from ..core.frames import Hello, ReceiveBuffer
from ..durable.session_journal import Durable
from ..exceptions import ReliableTCPError, WindowFull
from ._deadline import Deadline
from ._inbox import Inbox
from ._link import WAIT, Link, Waiting
from ._timers import CALLBACKS, TIMERS
from .tls import TLSLayer

if TYPE_CHECKING:
    from .channel import Channel

__all__ = ["SessionShell", "Connecting", "Unacked"]

logger = logging.getLogger(__name__)


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
        self._channel.lock.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self._channel.lock.release()
        self._channel._run_after_lock()


class SessionShell(SessionFront[Link]):
    """One session kept connected on threads: connections, timers, events, the end.

    The decisions are the shared :class:`~reliable_tcp.common.session.SessionPolicy`'s;
    this class waits and moves bytes for it and carries out its actions
    (:class:`~reliable_tcp.common.front.SessionFront` dispatches each to a
    handler here; all of them run under the lock).
    It is the :class:`~reliable_tcp.sync._link.LinkOwner` of its connections and
    the :class:`~reliable_tcp.sync._timers.TimerTarget` of the timer thread.
    Doors: :meth:`open_link` (attach a connection: the Connector, the
    listener), :meth:`begin_close` / :meth:`finish_close` (the channel, the
    listener), :meth:`end_restored` (the listener), and the Connector's
    :meth:`wait_disconnected`, :meth:`connect_failed`,
    :meth:`wait_first_handshake`.
    """

    def __init__(
        self,
        engine: SessionEngine,
        shell: ShellOptions,
        *,
        durable: Durable | None = None,
        restored: bool = False,
        on_end: Callable[[SessionShell], None] | None = None,
        on_confirmed: Callable[[SessionShell], None] | None = None,
    ) -> None:
        super().__init__(engine, shell, "rtcp", durable=durable, restored=restored, on_end=on_end, on_confirmed=on_confirmed)
        #: The public channel that carries this session's API (set by it).
        self.channel: Channel | None = None
        self.lock = threading.Lock()  # the engine, the policy, and what is marked "lock"
        self.locked = _Locked(self)
        self.sendable = threading.Condition(self.lock)  # window room, acks, the end
        self.writable = threading.Condition(self.lock)  # output for the writer, a link change, the end
        self.changed = threading.Condition(self.lock)  # link or state changed
        self.inbox = Inbox(shell.max_queued_messages, shell.max_queued_bytes)
        # A durable channel's consumer: recv waits under this lock, and the
        # rule says whose uncommitted messages they are (common/consumer.py).
        self.consumer_lock = threading.Lock()
        self.consumers: ConsumerRule[threading.Thread] = ConsumerRule(threading.Thread.is_alive, lambda t: f"thread {t.name!r}")
        self._after: list[Callable[[], None]] = []  # lock
        self._links: list[Link] = []  # lock: every link started, to join
        self._link_numbers = itertools.count(1)
        self.connector: Connecting | None = None
        #: Session records reach the journal in order, and a commit's record is
        #: written whole before a teardown takes the journal away.
        self.journal_order = threading.Lock()
        with self.locked:
            self._reschedule()

    @property
    def state(self) -> ChannelState:
        """The channel state the application sees."""
        with self.lock:
            return self._state()

    def statistics(self) -> ChannelStatistics:
        """A frozen snapshot of the counters."""
        with self.lock:
            return self._statistics(len(self.inbox))

    def end_exception(self) -> ReliableTCPError:
        """A fresh exception for the end, chained to its root cause (the lock
        may or may not be held: the end never changes once recorded)."""
        assert self.policy.ending is not None
        return self.policy.ending.exception()

    def end(self, kind: EndKind, reason: str, unacked: Unacked, cause: BaseException | None) -> None:
        """End the session now (a local failure). Lock held."""
        self.carry_out(self.policy.end(Ending.of(kind, reason, unacked, cause)))

    def end_restored(self, reason: str, unacked: Unacked) -> None:
        """A journal says this session was lost before the restart: end it
        now, so its owner is told (once) what was never acknowledged."""
        with self.locked:
            self.carry_out(self._restored_end(reason, unacked))

    def teardown(self, deadline: Deadline, *, linger: bool, reported: bool = True) -> None:
        """Stop the connector and the connections, join every thread, close
        the journal (``reported``: the owner has been told how it ended, so
        a lost session's journal can be retired)."""
        with self.locked:
            self.policy.stop()
            connector = self.connector
            link = self.policy.link
            self._wake_waiters()
        if connector is not None:
            connector.stop()
        if link is not None:
            if self.policy.ended and linger:
                # An orderly end: the last frames leave, our FIN, the peer's EOF.
                final = deadline.earlier(FINAL_FLUSH)
                link.finished.wait(final.remaining())
                link.join(final)
            with self.locked:
                if self.policy.link is link:
                    self.policy.release_link()
                    self.inbox.interrupt()
                    self.writable.notify_all()
            link.close(abort=not link.finished.is_set())
        with self.lock:
            links = list(self._links)
        stopped = connector.join(deadline.earlier(FINAL_FLUSH)) if connector is not None else True
        for each in links:
            stopped = each.join(deadline.earlier(FINAL_FLUSH)) and stopped
        if not stopped:
            logger.error("%s: a thread did not stop in time", self._name)
        with self.journal_order, self.lock:  # not while a session record is being written
            self._links = [each for each in self._links if each.running]
            close_journal = self._take_journal(reported=reported)
        if close_journal is not None:
            close_journal()

    def begin_close(self) -> None:
        """Refuse new sends and send CLOSE behind what is queued (also the
        listener's door, so it can start every session's close at once)."""
        with self.locked:
            self.carry_out(self.policy.close(time.monotonic()))

    def move_away(self, reason: str) -> None:
        """The listener drains: end this session's connection in order (FIN)
        and keep the session, for its client's resume after the restart."""
        with self.locked:
            link = self.policy.link
            if link is not None:
                self.carry_out(self.policy.link_lost(link, time.monotonic(), reason, None, abort=False))

    def hand_over(self, deadline: Deadline, reason: str) -> None:
        """A draining listener is done: release the session unchanged in its
        journal for the restarted listener; the channel's calls raise
        SessionHandedOver(``reason``) from now on."""
        with self.locked:
            TIMERS.cancel(self)  # inert from now on: no resume window runs out in this process
            self._mark_handed_over(reason)
        self.teardown(deadline, linger=False, reported=False)

    def finish_close(self, deadline: Deadline, *, reported: bool = True) -> None:
        """Wait for the close handshake within ``deadline``, then release
        everything (after :meth:`begin_close`)."""
        with self.locked:
            if not deadline.wait(self.changed, lambda: self.policy.ended):
                self.carry_out(self.policy.close_timed_out(time.monotonic()))
        self.teardown(deadline, linger=True, reported=reported)

    # -------------------------------------------------------- locking help

    def _run_after_lock(self) -> None:
        """Run what was deferred until the lock was released."""
        while self._after:
            with self.lock:
                actions, self._after = self._after, []
            for action in actions:
                try:
                    action()
                except Exception:  # a failed close or write must not kill the calling thread
                    logger.exception("%s: deferred action failed", self._name)

    def _call_back(self, callback: Callable[[ChannelEvent], None], event: ChannelEvent) -> None:
        CALLBACKS.call(lambda: callback(event))  # the callback thread: never under the lock

    def _wake_waiters(self) -> None:
        for condition in (self.sendable, self.writable, self.changed):
            condition.notify_all()

    def _drop_received(self, error: Callable[[], BaseException]) -> None:
        self.inbox.end(error, discard=True)

    def _schedule(self, due: float) -> None:
        TIMERS.schedule(self, due)  # lock held: an end (which cancels) can't race it

    # The handlers of the policy's actions (SessionFront.carry_out), lock
    # held: what does I/O or calls user code is queued in self._after.

    def _output_ready(self) -> None:
        self.writable.notify()

    def _deliver(self, messages: tuple[bytes, ...], nbytes: int) -> None:
        self.inbox.put(messages, nbytes)

    def _acknowledged(self, ack: int) -> None:
        self.sendable.notify_all()
        if self.durable is not None:
            self._after.append(functools.partial(self.durable.record_acked, ack))

    def _close_link(self, link: Link, abort: bool) -> None:
        link.closed = True  # its threads stop at their next step
        self._after.append(functools.partial(link.close, abort=abort))
        self.inbox.interrupt()

    def _persist(self) -> None:
        self._after.append(self._persist_session)

    def _confirmed(self, callback: Callable[[Any], None]) -> None:
        self._after.append(functools.partial(callback, self))

    def _ended(self, action: Ended) -> None:
        """The session ended: report it (once the journal holds it). Lock held."""
        durable, final = self.durable, action.final
        if durable is None:
            self.inbox.end(self.end_exception)
            self._notify(final)
        else:
            # recv() and the final event report the end only once the journal
            # holds it: an application that saw the peer's close and then died
            # must not be offered the finished session again by the restart.
            def record_then_report(kind: EndKind = action.ending.kind, reason: str = action.ending.reason) -> None:
                durable.record_end(kind, reason)
                self.inbox.end(self.end_exception)
                self._notify(final)

            self._after.append(record_then_report)
        TIMERS.cancel(self)
        if self._on_end is not None:
            self._after.append(functools.partial(self._on_end, self))

    def _persist_session(self) -> None:
        """Journal the session's current id and secrets, then release the output."""
        with self.journal_order:  # the newest secret is the last one written; no finish meanwhile
            with self.lock:
                durable = self.durable
                record = self._session_record()
            error = self._record_session(durable, record) if durable is not None else None
        with self.locked:
            self.carry_out(self.policy.persisted(error))
            self.writable.notify_all()

    # ----------------------------------------------------------- connections

    def open_link(
        self,
        sock: Any,
        tls: TLSLayer | None = None,
        *,
        order: int = 0,
        hello: Hello | None = None,
        new_secret: bytes = b"",
    ) -> None:
        """The door for client.py and server.py: make ``sock`` the current
        connection and start its threads (``SessionPolicy.open_link`` decides).
        Raises HandshakeRejected (listening side)."""
        link = Link(sock, self, tls=tls, order=order)
        with self.locked:
            if not self._admit(link, time.monotonic(), order, hello, new_secret):  # (a refusal raises for the listener)
                self._after.append(functools.partial(link.close, abort=True))
                return
            # Teardown joins the links whose threads still run; one whose
            # threads ended is done with (its socket closed itself), and
            # keeping it would hold a socket, two threads and a TLS object
            # per reconnect for the session's lifetime.
            self._links = [each for each in self._links if each.running]
            self._links.append(link)
        link.start(f"{self._name}-c{next(self._link_numbers)}")

    # ------------------------------------------------------- link callbacks

    def link_received(self, link: Link, data: bytes | memoryview | ReceiveBuffer, now: float) -> bool:
        """LinkOwner: bytes arrived; returns once there is room for more."""
        direct = None
        with self.locked:
            if link is self.policy.link:
                if data:
                    self.carry_out(self.policy.received(link, data, now))
                    direct = self.take_direct()
                if link.tls_pending:
                    self.writable.notify()
        if direct is not None:
            self.write_direct(direct)  # an answer (PONG, ACK, a reply) without waking the writer
        # Backpressure: stop reading while the application is behind, so TCP
        # flow control slows the sender instead of our memory growing.
        self.inbox.wait_room(lambda: link.closed)
        return not link.closed

    def take_direct(self) -> Link | None:
        """Lock held: when the writer is idle, hand the engine's output to
        the calling thread instead of waking the writer (Link.take_output);
        not while a new secret waits for the journal."""
        link = self.policy.link
        if link is None or not self.policy.output_allowed or not self.engine.has_output():
            return None
        return link if link.take_output(lambda: self.engine.data_to_send(time.monotonic())) else None

    def write_direct(self, link: Link) -> None:
        """Outside the lock: send what :meth:`take_direct` took."""
        # The writer runs anyway for more output, or to finish after the end.
        link.write_taken(self.lock, self.writable, lambda: self.engine.has_output() or self.policy.ended)

    def send_now(self, data: bytes) -> int:
        """send() without a journal, in one short hold of the lock: queue
        ``data`` if the window has room and nothing ended, and get it moving
        (from this thread when nothing else is in flight: a request, a
        reply). Its sequence number, or 0 for the general path."""
        policy, engine = self.policy, self.engine  # (the hot path: no attribute looked up twice)
        direct = None
        with self.lock:
            if policy.closing or policy.ending is not None:
                return 0
            try:
                seq = engine.send_message(data, 0.0)
            except WindowFull:
                return 0  # wait for room on the general path
            link = policy.link
            if link is not None:
                if engine.unacked_count == 1:
                    direct = self.take_direct()
                if direct is None:
                    link.wake_writer(self.writable)
        if direct is not None:
            self.write_direct(direct)
        return seq

    def link_output(self, link: Link) -> bytes | list[bytes] | None:
        """LinkOwner: the writer's next bytes; None once nothing more goes out."""
        with self.lock:
            return link.next_output(self.writable, self._carries, self._produce)

    def _carries(self, link: Link) -> bool:
        return link is self.policy.link

    def _produce(self, link: Link) -> bytes | list[bytes] | None | Waiting:
        """Lock held: the engine's output for the writer, WAIT, or None (the
        session ended and its last frame is out)."""
        policy, engine = self.policy, self.engine
        if policy.output_allowed and engine.has_output():
            return engine.data_to_send_parts(time.monotonic())
        if link.tls_pending:
            return b""  # TLS has records of its own to send
        return None if policy.ended else WAIT

    def link_ended(self, link: Link, error: BaseException | None, reason: str, crashed: bool) -> None:
        """LinkOwner: the connection failed, saw EOF, or a thread crashed."""
        with self.locked:
            if crashed:
                self.end(EndKind.BROKEN, reason, self.engine.unacked(), error)
                self.carry_out(self.policy.link_lost(link, time.monotonic(), reason, error, abort=True))
            elif not self.policy.ended:
                self.carry_out(self.policy.link_ended(link, time.monotonic(), error, reason))

    # ---------------------------------------------------------------- timers

    def fire_timers(self, now: float) -> None:
        """TimerTarget: fire what is due (heartbeats, acks, dead and expiry
        verdicts) and schedule the next deadline. The look at the socket
        that the verdict needs happens outside the lock."""
        with self.lock:
            check = self.policy.liveness_check(now, reading_paused=self.inbox.full)
            if check is None:
                self._reschedule()
                return
            link = self.policy.link
        evidence = gather_evidence(link, check)
        with self.locked:
            self.carry_out(self.policy.timers_due(now, check, link, evidence))

    # ------------------------------------------------- the connecting side

    def wait_disconnected(self) -> bool:
        """The Connector's door: block until the session needs a new
        connection; False once it never will."""
        with self.lock:
            self.changed.wait_for(lambda: self.policy.link is None or self.policy.stopping)
            return not self.policy.stopping

    def connect_failed(self, error: BaseException, *, reason: str) -> None:
        """The Connector's door: an attempt failed; one not worth retrying
        ends the session (SessionPolicy.connect_failed)."""
        with self.locked:
            self.carry_out(self.policy.connect_failed(time.monotonic(), error, reason))

    def wait_first_handshake(self, deadline: Deadline, address: object) -> None:
        """connect(): return once the first handshake is done, or release
        everything and raise why not."""
        policy = self.policy
        with self.lock:
            deadline.wait(self.changed, lambda: policy.ever_connected or policy.ended)
            error = policy.first_handshake_error(address)
        if error is None:
            return
        self.teardown(Deadline(FINAL_FLUSH), linger=False)
        raise error
