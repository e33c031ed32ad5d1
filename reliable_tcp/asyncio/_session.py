"""The machinery under the asyncio channel: one session driven by the event loop.

``LoopSession`` owns the engine and everything the loop does for it: it
feeds the engine what a connection reads (``link_data``), hands the
engine's output to the transport once per loop iteration (``_flush_soon``),
fires the engine's timers (``loop.call_at`` on its next deadline, with the
socket probes that tell a busy loop or a paused reader from a dead peer),
pauses reading while the receive queue is full, and records the session's
end once (``_ending.Ending``). ``client.py`` and ``server.py`` attach
connections through one door, ``_open_link``; ``channel.py`` builds the
public API on top. The asyncio counterpart of the threaded
``_session.SessionShell``; nothing here blocks the loop (fsyncs run in its executor).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

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
from ..exceptions import ChannelClosed, HandshakeRejected, ReliableTCPError
from ._link import NO_OWNER, LinkProtocol

__all__ = ["LoopSession"]

logger = logging.getLogger(__name__)

#: After the session ended: how long the last frames may take to leave.
_FINAL_FLUSH = 2.0
#: How long a teardown waits for the journal to be closed (an fsync, a close, perhaps a delete).
_JOURNAL_FINISH = 5.0

_ids = itertools.count(1)


class Signal:
    """Wakes every coroutine waiting for a change (a broadcast without a lock).

    Waiting never cancels the shared future, so one waiter's cancellation
    leaves the others waiting."""

    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def fire(self) -> None:
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(self, deadline: float | None) -> bool:
        """Until the next :meth:`fire`; False if ``deadline`` (loop time) came first."""
        loop = asyncio.get_running_loop()
        if self._future is None or self._future.done():
            self._future = loop.create_future()
        timeout = None if deadline is None else max(0.0, deadline - loop.time())
        done, _ = await asyncio.wait({self._future}, timeout=timeout)
        return bool(done)


class LoopSession:
    """One session's engine, connection, timers, inbox and end, on the event
    loop (all of it runs on the loop's thread; nothing here needs a lock)."""

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
        self._loop = asyncio.get_running_loop()
        self._engine = engine
        self._config = engine.config
        self._shell = shell
        self._durable = durable
        #: True for a session brought back from a journal after a restart.
        self.restored = restored
        self._on_end = on_end
        self._on_confirmed = on_confirmed
        self._name = f"rtcp-async-{'client' if engine.client else 'server'}-{next(_ids)}"
        self._changed = Signal()  # anything a waiter may be waiting for
        self._inbox: deque[bytes] = deque()
        self._inbox_bytes = 0
        self._taken = 0
        self._committed_base = engine.committed
        # A durable channel's consumer: recv waits under this lock, and the
        # rule says whose uncommitted messages they are (common/consumer.py).
        self._consumer_lock = asyncio.Lock()
        self._consumers: ConsumerRule[asyncio.Task[object] | None] = ConsumerRule(
            lambda task: task is not None and not task.done(), lambda task: f"task {task.get_name() if task else None!r}")
        self._link: LinkProtocol | None = None
        self._flush_scheduled = False
        self._output_held = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: float | None = None
        self._next_probe = 0.0
        self._ever_connected = restored and not engine.client
        self._closing = False
        self._stopping = False
        self._ending: Ending | None = None
        self._close_reported = False
        self._last_cause: BaseException | None = None
        self._disconnects = 0
        self._disconnected_at: float | None = None
        self._last_recovery: float | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closer: asyncio.Future[None] | None = None
        self._end_recorded: asyncio.Future[None] | None = None  # the journal's END record
        self._reschedule()

    def _raise_if_closed(self) -> None:
        if self._ending is not None:
            raise self._ending.exception()
        if self._closing:
            raise ChannelClosed("the channel is closing")

    def _record_end(self, ending: Ending) -> None:
        if self._ending is not None:
            return
        self._ending = ending = ending.with_cause(self._last_cause)
        self._stopping = True
        self._changed.fire()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if ending.failed:
            logger.warning("%s: %s (%d unacknowledged)", self._name, ending.reason, len(ending.unacked))
        final = self._event("failed" if ending.failed else "closed", ending.reason)
        if self._durable is None:
            self._dispatch(final)
        else:
            # recv() and the final event report the end only once the journal
            # holds it (a restart must not offer the finished session again).
            self._end_recorded = self._loop.run_in_executor(None, self._durable.record_end, ending.kind, ending.reason)
            self._end_recorded.add_done_callback(lambda _: self._dispatch(final))
            self._background(self._end_recorded)
        if self._on_end is not None:
            self._loop.call_soon(self._on_end, self)
        # The connection goes with the session, whoever ended it: the last
        # frames (a REJECT, a CLOSE_ACK) leave first, then FIN; RST if the
        # peer does not take them in time.
        self._loop.call_soon(self._release_link)

    def _release_link(self) -> None:
        link = self._link
        if link is None or link.lost:
            return
        self._flush()
        link.close(abort=False)
        self._loop.call_later(_FINAL_FLUSH, functools.partial(link.close, abort=True))

    def _end_restored(self, reason: str, unacked: Unacked) -> None:
        """A journal says this session was lost before the restart."""
        self._record_end(Ending.of("lost", reason, unacked, None))

    async def _teardown(self, deadline: float | None, *, reported: bool) -> None:
        self._stopping = True
        self._changed.fire()
        for task in list(self._tasks):
            task.cancel()
        link = self._link
        if link is not None:
            self._flush()
            link.close(abort=False)
            wait = _FINAL_FLUSH if deadline is None else max(0.0, min(_FINAL_FLUSH, deadline - self._loop.time()))
            try:
                await asyncio.wait_for(link.closed_event.wait(), wait)
            except TimeoutError:
                link.close(abort=True)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=_FINAL_FLUSH)
        finishing = self._finish_durable(reported=reported)
        if finishing is not None:
            # As the threaded close: the journal is closed (deleted after a
            # complete close) and its lock released before close() returns,
            # so the next connect with it in this process finds it free.
            await asyncio.wait({finishing}, timeout=_JOURNAL_FINISH)

    def _finish_durable(self, *, reported: bool) -> asyncio.Future[None] | None:
        """Close the journal off the loop (finished, or released if the session
        has not ended); the work, or None if there is no journal."""
        durable, self._durable = self._durable, None
        if durable is None:
            return None
        if self._ending is not None:
            kind = self._ending.kind
            work = self._loop.run_in_executor(None, lambda: durable.finish(kind, reported=reported))
        else:
            work = self._loop.run_in_executor(None, durable.release)
        self._background(work)
        return work

    async def _end_durable(self) -> None:
        """Wait until the journal holds the end (recv() reports it only then:
        an application that saw the end and died must not be offered the
        finished session again by the restart). record_end never raises."""
        if self._end_recorded is not None:
            await asyncio.shield(self._end_recorded)

    def _background(self, awaitable: Any) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ events

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
            self._loop.call_soon(callback, event)

    def _absorb(self, now: float) -> None:
        """Act on the engine's events and output."""
        engine = self._engine
        for event in engine.events_received():
            if isinstance(event, ev.MessagesReceived):
                self._inbox.extend(event.messages)
                self._inbox_bytes += event.nbytes
                full = len(self._inbox) >= self._shell.max_queued_messages or self._inbox_bytes >= self._shell.max_queued_bytes
                if full and self._link is not None:
                    self._link.pause_reading()
                self._changed.fire()
            elif isinstance(event, ev.MessagesAcknowledged):
                self._changed.fire()
                if self._durable is not None:
                    self._durable.record_acked(event.ack)  # a small write; its fsync comes with the next one
            elif isinstance(event, ev.HandshakeCompleted):
                self._on_handshake(event, now)
            elif isinstance(event, ev.PeerConfirmed) and self._on_confirmed is not None:
                self._loop.call_soon(self._on_confirmed, self)
            elif isinstance(event, ev.TransportFailed):
                self._drop_link(event.reason, event.error, abort=True)
            elif (ending := Ending.of_event(event)) is not None:
                self._record_end(ending)
        if engine.has_output():
            self._flush_soon()
        self._reschedule()

    def _on_handshake(self, event: ev.HandshakeCompleted, now: float) -> None:
        if self._durable is not None and self._engine.client:
            self._output_held = True  # the new secret is durable before the confirming ACK leaves
            self._background(self._persist_session())
        first = not self._ever_connected
        self._ever_connected = True
        self._changed.fire()
        if event.resumed:
            if self._disconnected_at is not None:
                self._last_recovery = now - self._disconnected_at
            self._notify("resumed", replayed=event.replayed)
        elif first:
            self._notify("connected", self._engine.session_id.hex())
        self._disconnected_at = None

    async def _persist_session(self) -> None:
        durable = self._durable
        if durable is not None:
            engine = self._engine
            snapshot = (engine.session_id, engine.secret, engine.previous_secret)
            try:
                await self._loop.run_in_executor(None, durable.record_session, *snapshot)
            except ReliableTCPError as exc:
                self._record_end(Ending.of("broken", f"the journal refused the session record: {exc}", engine.unacked(), exc))
        self._output_held = False
        self._flush_soon()

    # ------------------------------------------------------------ writing

    def _flush_soon(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Hand everything the engine wants written to the transport, in one go."""
        self._flush_scheduled = False
        link = self._link
        if link is None or link.lost or link.write_paused:
            return
        if self._output_held and self._ending is None:
            return
        parts = self._engine.data_to_send_parts(self._loop.time())
        if parts:
            link.write(parts)

    def _resume_reading(self) -> None:
        link = self._link
        if (
            link is not None
            and link.read_paused
            and len(self._inbox) < self._shell.max_queued_messages
            and self._inbox_bytes < self._shell.max_queued_bytes
        ):
            link.resume_reading()

    # ----------------------------------------------------------- connections

    def _open_link(self, link: LinkProtocol, *, hello: Hello | None = None, new_secret: bytes = b"") -> None:
        """Make ``link`` the current connection (the door for client.py and
        server.py; as the threaded channel's _open_link). Raises HandshakeRejected."""
        if self._stopping:
            if not self._engine.client:
                raise HandshakeRejected(RejectReason.SESSION_UNKNOWN, "no such session")
            link.close(abort=True)
            return
        current = self._link
        now = self._loop.time()
        if hello is not None:
            if current is not None and current.order > link.order:
                raise HandshakeRejected(RejectReason.SESSION_UNKNOWN, "a newer connection holds this session")
            try:
                self._engine.resume(hello, new_secret, now)
            finally:
                self._absorb(now)
        elif self._engine.client:
            self._engine.connection_made(now)
        if current is not None:
            self._link = None
            current.owner = NO_OWNER
            current.close(abort=True)
        link.owner = self
        self._link = link
        self._next_probe = now + self._config.heartbeat_interval
        if self._durable is not None and not self._engine.client:
            self._output_held = True  # the secret in this ACCEPT is durable before it leaves
            self._background(self._persist_session())
        self._absorb(now)
        self._changed.fire()

    def _drop_link(self, reason: str, cause: BaseException | None, *, abort: bool) -> None:
        link = self._link
        if link is None:
            return
        self._link = None
        link.owner = NO_OWNER
        link.close(abort=abort)
        now = self._loop.time()
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
        self._changed.fire()

    # ---------------------------------------------------- connection events

    def link_data(self, link: LinkProtocol, data: bytes) -> None:
        """ProtocolOwner: bytes arrived on the current connection."""
        if link is self._link and self._ending is None:
            now = self._loop.time()
            self._engine.receive_data(data, now)
            self._absorb(now)

    def link_lost(self, link: LinkProtocol, error: BaseException | None) -> None:
        """ProtocolOwner: the connection ended."""
        if link is self._link and self._ending is None:
            reason = str(error) if error is not None else "connection closed by peer"
            self._drop_link(reason, error, abort=error is not None)
        self._changed.fire()

    def link_writable(self, link: LinkProtocol) -> None:
        """ProtocolOwner: the transport can take more."""
        if link is self._link:
            self._flush_soon()

    # ---------------------------------------------------------------- timers

    def _reschedule(self) -> None:
        if self._ending is not None:
            return
        due = self._engine.next_deadline()
        if due is None or (self._timer_due is not None and due >= self._timer_due and self._timer is not None):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        self._timer = self._loop.call_at(due, self._fire_timers)

    def _fire_timers(self) -> None:
        """Fire what is due; probes tell a busy loop or a paused reader from a dead peer."""
        self._timer = None
        self._timer_due = None
        if self._ending is not None:
            return
        engine = self._engine
        now = self._loop.time()
        link = self._link
        # The kernel's pending error is read only when it could be hidden: the
        # loop sees an error on a socket it reads, not on one paused or silent.
        quiet = link is not None and (link.read_paused or engine.silence(now) >= self._config.heartbeat_interval)
        if link is not None and quiet and now >= self._next_probe:
            self._next_probe = now + self._config.heartbeat_interval
            error = link.pending_error()
            if error is not None:
                self._drop_link(link_error_reason(error) or str(error), error, abort=True)
                link = None
        if link is not None and engine.state in LIVE_STATES and engine.silence(now) >= self._config.dead_after_seconds:
            if link.read_paused:
                since = link.seconds_since_peer_ack()
                engine.hold_liveness(now, now if since is None else now - since)
            elif link.has_pending_input():
                engine.hold_liveness(now)  # the loop was busy: bytes wait to be read
        engine.handle_timer(now)
        self._absorb(now)
