"""The machinery under the asyncio channel: this file only waits and moves bytes.

``LoopSession`` runs one session on the event loop: it feeds the shared
session (``common/session.py``, where every decision lives) what a
connection reads (``link_data``) or how it ended (``link_lost``), fires its
timers (``loop.call_at``) with what the socket says, and carries out the
actions it returns: the receive queue (reading paused while it is full),
output handed to the transport once per loop iteration (``_flush_soon``),
journal writes in the loop's executor, events. ``client.py`` and
``server.py`` attach connections through one door, ``_open_link``;
``channel.py`` builds the public API on top. The asyncio twin of the
threaded ``sync/_session.py``; nothing here blocks the loop.
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
from ..common.ending import EndKind, Ending, Unacked
from ..common.options import ShellOptions
from ..common.session import CHANGED, OUTPUT, Acknowledged, Action, Confirmed, Deliver, DropLink, Ended, Notify, Persist, Session
from ..common.sockets import link_error_reason
from ..common.status import ChannelEvent
from ..core.engine import SessionEngine
from ..core.frames import Hello
from ..durable.session_journal import Durable
from ..exceptions import ReliableTCPError
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
    """One session's connection, timers, inbox and end, on the event loop
    (all of it runs on the loop's thread; nothing here needs a lock). The
    decisions are the shared :class:`~reliable_tcp.common.session.Session`'s."""

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
        self._name = f"rtcp-async-{'client' if engine.client else 'server'}-{next(_ids)}"
        self._session: Session[LinkProtocol] = Session(
            engine, self._name, durable=durable is not None, restored=restored, wants_events=shell.on_event is not None)
        self._engine = engine
        self._config = engine.config
        self._shell = shell
        self._durable = durable
        #: True for a session brought back from a journal after a restart.
        self.restored = restored
        self._on_end = on_end
        self._on_confirmed = on_confirmed
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
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closer: asyncio.Future[None] | None = None
        self._end_recorded: asyncio.Future[None] | None = None  # the journal's END record
        self._reschedule()

    def _raise_if_closed(self) -> None:
        self._session.raise_if_closed()

    def _release_link(self) -> None:
        link = self._session.link
        if link is None or link.lost:
            return
        self._flush()
        link.close(abort=False)
        self._loop.call_later(_FINAL_FLUSH, functools.partial(link.close, abort=True))

    def _end_restored(self, reason: str, unacked: Unacked) -> None:
        """A journal says this session was lost before the restart."""
        self._carry_out(self._session.end(Ending.of(EndKind.LOST, reason, unacked, None)))

    async def _teardown(self, deadline: float | None, *, reported: bool) -> None:
        self._session.stop()
        self._changed.fire()
        for task in list(self._tasks):
            task.cancel()
        link = self._session.link
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
        ending = self._session.ending
        if ending is not None:
            work = self._loop.run_in_executor(None, lambda: durable.finish(ending.kind, reported=reported))
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

    # ------------------------------------------------------------ actions

    def _dispatch(self, event: ChannelEvent | None) -> None:
        callback = self._shell.on_event
        if event is not None and callback is not None:
            self._loop.call_soon(callback, event)

    def _absorb(self, now: float) -> None:
        """Act on what the engine did (after a send or a close)."""
        self._carry_out(self._session.absorb(now))

    def _carry_out(self, actions: list[Action]) -> None:
        """Do what the session decided."""
        for action in actions:
            if action is OUTPUT:
                self._flush_soon()
            elif action is CHANGED:
                self._changed.fire()
            elif isinstance(action, Deliver):
                self._inbox.extend(action.messages)
                self._inbox_bytes += action.nbytes
                link = self._session.link
                if link is not None and self._inbox_full():
                    link.pause_reading()
                self._changed.fire()
            elif isinstance(action, Acknowledged):
                self._changed.fire()
                if self._durable is not None:
                    self._durable.record_acked(action.ack)  # a small write; its fsync comes with the next one
            elif isinstance(action, DropLink):
                link = action.link
                link.owner = NO_OWNER
                link.close(abort=action.abort)
            elif isinstance(action, Notify):
                self._dispatch(action.event)
            elif isinstance(action, Persist):
                self._background(self._persist_session())
            elif isinstance(action, Confirmed):
                if self._on_confirmed is not None:
                    self._loop.call_soon(self._on_confirmed, self)
            elif isinstance(action, Ended):
                self._ended(action)
        self._reschedule()

    def _ended(self, action: Ended) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        final = action.final
        if self._durable is None:
            self._dispatch(final)
        else:
            # recv() and the final event report the end only once the journal
            # holds it (a restart must not offer the finished session again).
            self._end_recorded = self._loop.run_in_executor(None, self._durable.record_end, action.ending.kind, action.ending.reason)
            self._end_recorded.add_done_callback(lambda _: self._dispatch(final))
            self._background(self._end_recorded)
        if self._on_end is not None:
            self._loop.call_soon(self._on_end, self)
        # The connection goes with the session, whoever ended it: the last
        # frames (a REJECT, a CLOSE_ACK) leave first, then FIN; RST if the
        # peer does not take them in time.
        self._loop.call_soon(self._release_link)

    async def _persist_session(self) -> None:
        durable = self._durable
        error: ReliableTCPError | None = None
        if durable is not None:
            engine = self._engine
            snapshot = (engine.session_id, engine.secret, engine.previous_secret)
            try:
                await self._loop.run_in_executor(None, durable.record_session, *snapshot)
            except ReliableTCPError as exc:
                error = exc
        self._carry_out(self._session.persisted(error))

    # ------------------------------------------------------------ writing

    def _flush_soon(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Hand everything the engine wants written to the transport, in one go."""
        self._flush_scheduled = False
        link = self._session.link
        if link is None or link.lost or link.write_paused or not self._session.output_allowed:
            return
        parts = self._engine.data_to_send_parts(self._loop.time())
        if parts:
            link.write(parts)

    def _inbox_full(self) -> bool:
        return len(self._inbox) >= self._shell.max_queued_messages or self._inbox_bytes >= self._shell.max_queued_bytes

    def _resume_reading(self) -> None:
        link = self._session.link
        if link is not None and link.read_paused and not self._inbox_full():
            link.resume_reading()

    # ----------------------------------------------------------- connections

    def _open_link(self, link: LinkProtocol, *, hello: Hello | None = None, new_secret: bytes = b"") -> None:
        """Make ``link`` the current connection (the door for client.py and
        server.py; ``Session.open_link`` decides). Raises HandshakeRejected."""
        actions, refusal = self._session.open_link(link, self._loop.time(), order=link.order, hello=hello, new_secret=new_secret)
        if refusal is None:
            link.owner = self
        self._carry_out(actions)
        if refusal is not None:
            if not self._engine.client:
                raise refusal
            link.close(abort=True)

    def _drop_link(self, reason: str, cause: BaseException | None, *, abort: bool) -> None:
        link = self._session.link
        if link is not None:
            self._carry_out(self._session.link_lost(link, self._loop.time(), reason, cause, abort=abort))

    # ---------------------------------------------------- connection events

    def link_data(self, link: LinkProtocol, data: bytes) -> None:
        """ProtocolOwner: bytes arrived on the current connection."""
        self._carry_out(self._session.received(link, data, self._loop.time()))

    def link_lost(self, link: LinkProtocol, error: BaseException | None) -> None:
        """ProtocolOwner: the connection ended."""
        if not self._session.ended:
            reason = str(error) if error is not None else "connection closed by peer"
            self._carry_out(self._session.link_lost(link, self._loop.time(), reason, error, abort=error is not None))
        self._changed.fire()

    def link_writable(self, link: LinkProtocol) -> None:
        """ProtocolOwner: the transport can take more."""
        if link is self._session.link:
            self._flush_soon()

    # ---------------------------------------------------------------- timers

    def _reschedule(self) -> None:
        due = self._session.next_timer()
        if due is not None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(due, self._fire_timers)

    def _fire_timers(self) -> None:
        """Fire what is due, with what the socket says (``Session.liveness_check``)."""
        self._timer = None
        now = self._loop.time()
        link = self._session.link
        check = self._session.liveness_check(now, reading_paused=link is not None and link.read_paused)
        if check is None:
            self._reschedule()
            return
        error = link.pending_error() if link is not None and check.read_error else None
        judged = link is not None and check.judge
        self._carry_out(self._session.timers_due(
            now, check, error=error, error_reason=(link_error_reason(error) or "") if error is not None else "",
            peer_ack_age=link.seconds_since_peer_ack() if judged and check.reading_paused and link is not None else None,
            input_waiting=judged and not check.reading_paused and link is not None and link.has_pending_input()))
