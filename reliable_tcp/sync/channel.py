"""The public channel: what the application calls (send, recv, flush, close, abort).

A Channel holds its machinery, a ``_session.SessionShell`` (connections,
timers, the shared policy, the end), and carries only the API, its argument
checks and its documentation; the connecting side's reconnect loop is
``client.Connector``. See docs/design.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from ..common import arguments
from ..common.status import ChannelState, ChannelStatistics
from ..common.timing import ABORT_FLUSH, HANDSHAKE_SHARE, REJECT_LINGER
from ..core.state import TERMINAL_STATES, SessionState
from ..exceptions import ChannelClosed, JournalWriteFailed, SessionHandedOver
from ._deadline import Deadline
from ._session import SessionShell, Unacked

_Taken = TypeVar("_Taken")

__all__ = ["Channel"]

logger = logging.getLogger(__name__)


class Channel:
    """A reliable, ordered, exactly-once message channel that survives broken links.

    Get one from :func:`reliable_tcp.connect` or
    :meth:`reliable_tcp.Listener.accept`. Thread-safe: any thread may call
    :meth:`send`, :meth:`recv`, :meth:`flush` and :meth:`close` (with a
    journal, one thread consumes at a time: see :meth:`recv`).

    Every message is delivered once and in order, or its sender is told:
    a session that ends with messages unacknowledged, however it ended,
    raises :class:`~reliable_tcp.SessionLost` (its ``unacked`` lists them)
    from ``send``, ``recv``, ``flush`` and iteration, and from the first
    ``close()``.
    """

    __slots__ = ("_session", "__weakref__")

    def __init__(self, session: SessionShell) -> None:
        # The machinery (connections, timers, the shared policy) is the
        # session's; the channel only carries the API. Made by connect() and
        # the listener, never by the application.
        self._session = session
        session.channel = self

    # -------------------------------------------------------------- queries

    @property
    def name(self) -> str:
        """The channel's name in logs and thread names (``rtcp-client-3``)."""
        return self._session.name

    @property
    def session_id(self) -> str:
        """The session id in hex (empty until the first handshake)."""
        return self._session.session_id

    @property
    def restored(self) -> bool:
        """True for a session brought back from a journal after a restart."""
        return self._session.restored

    @property
    def state(self) -> ChannelState:
        """The channel's current state."""
        return self._session.state

    def statistics(self) -> ChannelStatistics:
        """A frozen snapshot of the counters."""
        return self._session.statistics()

    @property
    def last_sent_seq(self) -> int:
        """Sequence number of the last message sent (durable, with a journal)."""
        with self._session.lock:
            return self._session.engine.next_seq - 1

    @property
    def last_committed_seq(self) -> int:
        """Sequence number of the last received message committed."""
        with self._session.lock:
            return self._session.engine.committed

    @property
    def max_sendable_size(self) -> int:
        """The largest message :meth:`send` takes now: the smaller of this
        side's ``max_message_size`` and the limit the peer announced in the
        handshake (until one completed, the protocol's default)."""
        with self._session.lock:
            return self._session.engine.max_sendable_size

    @property
    def last_received_seq(self) -> int:
        """Sequence number of the last message ``recv`` returned (numbering
        continues across restarts of a durable session)."""
        return self._session.committed_base + self._session.inbox.taken

    # ------------------------------------------------------------ messaging

    def send(self, data: bytes, timeout: float | None = None) -> int:
        """Queue one message for delivery; return its sequence number.

        Blocks while the retransmit window is full. Raises TimeoutError
        (nothing queued) when ``timeout`` passes first, MessageTooLarge,
        ChannelClosed once closing or closed, SessionLost once the session
        is lost, and with a journal JournalWriteFailed (nothing queued).
        """
        if type(data) is not bytes:
            data = arguments.message(data)
        if timeout is not None:
            timeout = arguments.timeout(timeout)
        session = self._session
        if session.durable is None:
            seq = session.send_now(data)  # the common case: room in the window, nothing ended
            if seq:
                return seq
        return self._queue([data], Deadline(timeout))

    def send_many(self, messages: Iterable[bytes], timeout: float | None = None) -> int:
        """Queue several messages in order, taking the lock once per window's
        worth; return the sequence number of the last. On timeout, raises
        TimeoutError with ``queued`` set to how many were queued."""
        pending = arguments.messages(messages)
        deadline = Deadline(arguments.timeout(timeout))
        return self._queue(pending, deadline) if pending else self.last_sent_seq

    def _queue(self, pending: list[bytes], deadline: Deadline) -> int:
        engine = self._session.engine
        session = self._session.policy
        engine.check_message_size(max(map(len, pending)))
        durable = self._session.durable
        queued = 0
        seq = 0
        position = None
        try:
            while queued < len(pending):
                with self._session.lock:
                    batch = pending[queued:] if queued else pending
                    size = len(batch[0])
                    if not deadline.wait(self._session.sendable, lambda: session.closing or session.ended or engine.can_send(size)):  # noqa: B023
                        error = TimeoutError(f"the retransmit window stayed full; {queued} messages were queued")
                        error.queued = queued  # type: ignore[attr-defined]
                        raise error
                    self._raise_if_closed()
                    engine.check_sendable()
                    if durable is not None:
                        # Under the lock on purpose: the record and the queueing
                        # are one step, so a message is journaled exactly when it
                        # is queued (a refused record raises before queueing).
                        fit = engine.room_for(batch)
                        batch = batch[:fit]
                        position = durable.record_sent(engine.next_seq, batch)
                    first, count = engine.send_messages(batch, time.monotonic())
                    if engine.state is SessionState.OPEN:
                        self._session.writable.notify()
                queued += count
                seq = first + count - 1
        finally:
            if durable is not None and position is not None:
                durable.wait_durable(position)  # also what was queued before an error
        return seq

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the peer has acknowledged every message sent so far.

        Raises TimeoutError if it hasn't by ``timeout``; SessionLost or
        ChannelClosed if the session ends first.
        """
        self._flush(Deadline(arguments.timeout(timeout)), for_owner=True)

    @property
    def acked_seq(self) -> int:
        """The highest sequence number the peer has acknowledged: every
        message up to it reached the peer (what that means: docs/guide.md,
        "Delivery receipts"). Continues across reconnects and, with a
        journal, across restarts; 0 before the first acknowledgement."""
        with self._session.lock:
            return self._session.engine.acked_seq

    def wait_acked(self, seq: int, timeout: float | None = None) -> None:
        """Wait until the peer has acknowledged message ``seq`` (a number
        :meth:`send` returned); at once if it already has.

        Raises TimeoutError when ``timeout`` passes first, SessionLost (its
        ``unacked`` listing what never reached the peer) if the session
        ended without it, and UsageError for a number never sent.
        """
        deadline = Deadline(arguments.timeout(timeout))
        session = self._session
        with session.lock:
            policy = session.policy
            receipt = policy.receipt(seq)
            if receipt is False:
                deadline.wait(session.sendable, lambda: policy.receipt(seq) is not False)
                receipt = policy.receipt(seq)
            if receipt is None:
                raise session.end_exception()
            acked = session.engine.acked_seq
        if not receipt:
            raise TimeoutError(f"message {seq} was not acknowledged in time (acknowledged up to {acked})")

    def _flush(self, deadline: Deadline, *, for_owner: bool) -> bool:
        with self._session.lock:
            engine = self._session.engine
            done = deadline.wait(self._session.sendable, lambda: not engine.unacked_count or self._session.policy.ended)
            if self._session.policy.ended and engine.unacked_count and for_owner:
                raise self._session.end_exception()
            if not done and for_owner:
                raise TimeoutError(f"{engine.unacked_count} messages still unacknowledged")
            return done

    def recv(self, timeout: float | None = None) -> bytes:
        """The next message, in order. Raises TimeoutError when none arrives
        in time, ChannelClosed after the last message of a closed session,
        SessionLost once the session is lost (after its last message).

        With a journal, one thread consumes at a time: while messages another
        live thread took are not committed, this raises UsageError (see
        docs/durability.md, "Several consumer threads")."""
        if timeout is not None:
            timeout = arguments.timeout(timeout)
        if self._session.durable is None:
            return self._session.inbox.get(timeout)
        return self._consume(lambda remaining: self._session.inbox.get(remaining), timeout)

    def recv_many(self, max_messages: int = 1024, timeout: float | None = None) -> list[bytes]:
        """Up to ``max_messages`` messages at once (at least one), in order."""
        max_messages = arguments.count(max_messages, "max_messages")
        timeout = arguments.timeout(timeout)
        if self._session.durable is None:
            return self._session.inbox.get_many(max_messages, timeout)
        return self._consume(lambda remaining: self._session.inbox.get_many(max_messages, remaining), timeout)

    def _consume(self, take: Callable[[float | None], _Taken], timeout: float | None) -> _Taken:
        """A durable channel's recv: one consumer at a time (common/consumer.py)."""
        deadline = Deadline(timeout)
        remaining = deadline.remaining()
        if not self._session.consumer_lock.acquire(timeout=-1 if remaining is None else remaining):
            raise TimeoutError("no message arrived in time (another thread was waiting in recv)")
        try:
            me = threading.current_thread()
            self._session.consumers.check(me, self._uncommitted())
            if self._session.options.auto_commit:
                self._commit()  # the application came back for more: it is done with the last one
            taken = take(deadline.remaining())
            self._session.consumers.took(me)
            return taken
        finally:
            self._session.consumer_lock.release()

    def _uncommitted(self) -> int:
        return self.last_received_seq - self.last_committed_seq

    def __iter__(self) -> Channel:
        return self

    def __next__(self) -> bytes:
        try:
            return self.recv()
        except ChannelClosed:
            raise StopIteration from None

    def commit(self) -> None:
        """Confirm every message ``recv`` has returned so far.

        With a journal, only committed messages are acknowledged to the
        peer, and after a restart delivery resumes after the last commit:
        a committed message is never delivered again, an uncommitted one is.
        ``recv`` commits what it returned before each time it is called
        again (``auto_commit``), so explicit calls are needed only to
        confirm the last message before stopping, or to batch confirmations
        (with ``auto_commit=False``). Without a journal it only records.
        With a journal, only the thread that took them may commit them
        (UsageError otherwise, while it lives).
        """
        if self._session.durable is not None:
            self._session.consumers.check(threading.current_thread(), self._uncommitted())
        self._commit()

    def _commit(self) -> None:
        upto = self.last_received_seq
        with self._session.lock:
            if upto <= self._session.engine.committed:
                return
        with self._session.journal_order:  # a teardown does not take the journal away meanwhile
            durable = self._session.durable
            if durable is None and self._session.policy.handed_over is not None:
                # A drain left the session in the journal as it was: this
                # commit can't reach it, and the restarted listener will
                # deliver these messages again. Say so rather than pretend.
                raise SessionHandedOver(self._session.policy.handed_over)
            if durable is not None:
                try:
                    durable.record_consumed(upto)  # durable before the peer is told
                except JournalWriteFailed as exc:
                    # Not fatal: the commit point stays where it was, so the peer
                    # keeps these messages (a restart now would deliver them
                    # again); the next commit tries again.
                    logger.warning("%s: commit not journaled, retried at the next one: %s", self.name, exc)
                    return
        with self._session.locked:
            now = time.monotonic()
            if self._session.engine.state not in TERMINAL_STATES:
                self._session.engine.commit(upto, now)
                self._session.absorb(now)

    # --------------------------------------------------------------- ending

    def close(self, timeout: float | None = 10.0) -> None:
        """Graceful close: flush, run the close handshake, then release every
        thread and socket, all within ``timeout``. Idempotent.

        New sends fail at once with ChannelClosed. A quarter of the budget is
        kept for the handshake, which acknowledges what is in flight both
        ways. If the session ended with messages unacknowledged (the budget
        ran out, the link failed, the resume window expired, the listener
        closed it), the channel is still released and the first close()
        raises SessionLost, listing them.

        What ``recv`` returned before is committed first (with a journal or
        ``ack_on_commit``, even with ``auto_commit=False``): closing says the
        application is done with it, so the close handshake acknowledges it
        and the peer never reports a delivered message as unacknowledged.
        Leaving a ``with`` block by an exception closes without that commit:
        the message being handled when it failed stays unacknowledged, and
        the peer is told so.
        """
        self._close_and_report(arguments.timeout(timeout), commit=True)

    def _close_and_report(self, timeout: float | None, *, commit: bool) -> None:
        deadline = Deadline(timeout)
        with self._session.lock:
            if self._session.policy.handed_over is not None:
                return  # a drain gave the session to the restarted listener: nothing here to close
            first_close = not (self._session.policy.ended or self._session.policy.closing)
        if first_close and commit:
            self._commit()
        self._close(deadline)
        with self._session.lock:
            report = self._session.policy.close_report()
        if report is not None:
            raise report

    def _close(self, deadline: Deadline) -> None:
        """close() without the report (so the owner of a channel the
        listener closes still learns of the unacknowledged from its own calls)."""
        with self._session.locked:
            self._session.policy.closing = True
            self._session.sendable.notify_all()
        # Flush first: an outage now is resumed, one during the handshake is not.
        remaining = deadline.remaining()
        self._flush(deadline.before(HANDSHAKE_SHARE * remaining) if remaining else deadline, for_owner=False)
        self._session.begin_close()
        self._session.finish_close(deadline)

    def abort(self) -> Unacked:
        """End the session at once, without the close handshake; return the
        ``(seq, payload)`` of the messages the peer had not acknowledged
        (they are discarded). Over a live connection the peer is told
        (REJECT ABORTED): its session ends at once with SessionLost."""
        with self._session.locked:
            if self._session.policy.handed_over is not None:
                return ()  # a drain gave the session to the restarted listener: it is not this process's to end
            if not self._session.policy.ended:
                now = time.monotonic()
                self._session.engine.abort(now)
                self._session.absorb(now)
            unacked = self._session.policy.ending.unacked if self._session.policy.ending is not None else ()
            link = self._session.policy.link
        if link is not None:
            link.finished.wait(ABORT_FLUSH)  # the writer puts the REJECT out, then FIN
        # Then the peer's EOF, briefly: closing while its bytes wait unread here
        # would reset the connection, and a reset can destroy the REJECT in
        # the peer's receive buffer before it reads it (protocol.md 7.4).
        self._session.teardown(Deadline(REJECT_LINGER), linger=True)
        if unacked:
            logger.warning("%s: aborted with %d unacknowledged messages", self.name, len(unacked))
        return unacked

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Always a graceful close, even when an exception is on its way: the
        # owner is then told (SessionLost) of anything not acknowledged, and
        # nothing is dropped without a word. abort() is the quick way out.
        # An exception leaves what recv() returned uncommitted: the message
        # being handled when it struck is not done with.
        self._close_and_report(10.0, commit=exc_info[0] is None)

    def __repr__(self) -> str:
        return f"<Channel {self.name} {self.state.value} session={self.session_id}>"

    def _raise_if_closed(self) -> None:
        """Raise what a send gets once the channel is closing or ended. Lock held."""
        self._session.policy.raise_if_closed()
