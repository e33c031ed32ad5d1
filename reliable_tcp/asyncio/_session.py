"""The machinery under the asyncio channel: this file only waits and moves bytes.

``LoopSession`` runs one session on the event loop: it feeds the shared
session (``common/session.py``, where every decision lives) what a
connection reads (``link_data``) or how it ended (``link_lost``), fires its
timers (``loop.call_at``) with what the socket says, and carries out the
actions it returns: the receive queue (reading paused while it is full),
output handed to the transport once per loop iteration (``_flush_soon``),
journal writes in the loop's executor, events. The public ``Channel``
(channel.py) holds one and carries the API; ``client.Connector`` and
``server.Listener`` attach connections through one door, ``open_link``.
Its attributes without an underscore are for those three. The asyncio
twin of the threaded ``sync/_session.py``; nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..common.consumer import ConsumerRule
from ..common.ending import EndKind, Ending, Unacked, first_handshake_error
from ..common.options import ShellOptions
from ..common.session import CHANGED, OUTPUT, Acknowledged, Action, Confirmed, Deliver, DropLink, Ended, Notify, Persist, SessionPolicy
from ..common.sockets import link_error_reason
from ..common.status import ChannelEvent, ChannelState, ChannelStatistics, channel_state_of, statistics_of
from ..core.engine import SessionEngine
from ..core.frames import Hello
from ..durable.session_journal import Durable
from ..exceptions import ReliableTCPError
from ._link import NO_OWNER, LinkProtocol

if TYPE_CHECKING:
    from .channel import Channel

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
    decisions are the shared :class:`~reliable_tcp.common.session.SessionPolicy`'s."""

    def __init__(
        self,
        engine: SessionEngine,
        shell: ShellOptions,
        *,
        durable: Durable | None = None,
        restored: bool = False,
        on_end: Callable[[LoopSession], None] | None = None,
        on_confirmed: Callable[[LoopSession], None] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        #: The public channel that carries this session's API (set by it).
        self.channel: Channel | None = None
        self._name = f"rtcp-async-{'client' if engine.client else 'server'}-{next(_ids)}"
        self.policy: SessionPolicy[LinkProtocol] = SessionPolicy(
            engine, self._name, durable=durable is not None, restored=restored, wants_events=shell.on_event is not None)
        self.engine = engine
        self._config = engine.config
        self.options = shell
        self.durable = durable
        #: True for a session brought back from a journal after a restart.
        self.restored = restored
        self._on_end = on_end
        self._on_confirmed = on_confirmed
        self.changed = Signal()  # anything a waiter may be waiting for
        self.inbox: deque[bytes] = deque()
        self.inbox_bytes = 0
        self.taken = 0
        self.committed_base = engine.committed
        # A durable channel's consumer: recv waits under this lock, and the
        # rule says whose uncommitted messages they are (common/consumer.py).
        self.consumer_lock = asyncio.Lock()
        self.consumers: ConsumerRule[asyncio.Task[object] | None] = ConsumerRule(
            lambda task: task is not None and not task.done(), lambda task: f"task {task.get_name() if task else None!r}")
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closer: asyncio.Future[None] | None = None
        self._end_recorded: asyncio.Future[None] | None = None  # the journal's END record
        self._reschedule()

    @property
    def name(self) -> str:
        """The channel's name in logs."""
        return self._name

    @property
    def state(self) -> ChannelState:
        """The channel state the application sees."""
        return channel_state_of(self.engine.state, self.policy.ever_connected)

    @property
    def session_id(self) -> str:
        """The session id in hex (empty until the first handshake)."""
        session_id = self.engine.session_id
        return session_id.hex() if any(session_id) else ""

    def statistics(self) -> ChannelStatistics:
        """A frozen snapshot of the counters."""
        policy = self.policy
        return statistics_of(self.engine, ever_connected=policy.ever_connected, disconnects=policy.disconnects,
                             queued_messages=len(self.inbox), last_recovery_time=policy.last_recovery)

    def begin_close(self) -> None:
        """Refuse new sends and send CLOSE behind what is queued (also the
        listener's door, so it can start every session's close at once)."""
        self.carry_out(self.policy.close(self.loop.time()))

    async def finish_close(self, deadline: float | None, *, reported: bool = True) -> None:
        """Wait for the close handshake until ``deadline``, then release everything."""
        while self.policy.ending is None:
            if not await self.changed.wait(deadline):
                self.carry_out(self.policy.close_timed_out(self.loop.time()))
                break
        await self.teardown(deadline, reported=reported)

    def abort(self) -> Unacked:
        """End the session at once (REJECT ABORTED over a live connection,
        then FIN); the messages discarded."""
        if self.policy.ending is None:
            now = self.loop.time()
            self.engine.abort(now)
            self.absorb(now)
        self.flush()
        ending = self.policy.ending
        self.policy.stop()
        for task in list(self.tasks):
            task.cancel()
        link = self.policy.link
        if link is not None:
            link.close(abort=False)  # the REJECT is buffered: it leaves, then FIN
        self.finish_durable(reported=True)
        return ending.unacked if ending is not None else ()

    def raise_if_closed(self) -> None:
        self.policy.raise_if_closed()

    def _release_link(self) -> None:
        link = self.policy.link
        if link is None or link.lost:
            return
        self.flush()
        link.close(abort=False)
        self.loop.call_later(_FINAL_FLUSH, functools.partial(link.close, abort=True))

    def end_restored(self, reason: str, unacked: Unacked) -> None:
        """A journal says this session was lost before the restart."""
        self.carry_out(self.policy.end(Ending.of(EndKind.LOST, reason, unacked, None)))

    async def teardown(self, deadline: float | None, *, reported: bool) -> None:
        self.policy.stop()
        self.changed.fire()
        for task in list(self.tasks):
            task.cancel()
        link = self.policy.link
        if link is not None:
            self.flush()
            link.close(abort=False)
            wait = _FINAL_FLUSH if deadline is None else max(0.0, min(_FINAL_FLUSH, deadline - self.loop.time()))
            try:
                await asyncio.wait_for(link.closed_event.wait(), wait)
            except TimeoutError:
                link.close(abort=True)
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=_FINAL_FLUSH)
        finishing = self.finish_durable(reported=reported)
        if finishing is not None:
            # As the threaded close: the journal is closed (deleted after a
            # complete close) and its lock released before close() returns,
            # so the next connect with it in this process finds it free.
            await asyncio.wait({finishing}, timeout=_JOURNAL_FINISH)

    def finish_durable(self, *, reported: bool) -> asyncio.Future[None] | None:
        """Close the journal off the loop (finished, or released if the session
        has not ended); the work, or None if there is no journal."""
        durable, self.durable = self.durable, None
        if durable is None:
            return None
        ending = self.policy.ending
        if ending is not None:
            work = self.loop.run_in_executor(None, lambda: durable.finish(ending.kind, reported=reported))
        else:
            work = self.loop.run_in_executor(None, durable.release)
        self.background(work)
        return work

    async def end_durable(self) -> None:
        """Wait until the journal holds the end (recv() reports it only then:
        an application that saw the end and died must not be offered the
        finished session again by the restart). record_end never raises."""
        if self._end_recorded is not None:
            await asyncio.shield(self._end_recorded)

    def background(self, awaitable: Any) -> None:
        task = asyncio.ensure_future(awaitable)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------ actions

    def _dispatch(self, event: ChannelEvent | None) -> None:
        callback = self.options.on_event
        if event is not None and callback is not None:
            self.loop.call_soon(callback, event)

    def absorb(self, now: float) -> None:
        """Act on what the engine did (after a send or a close)."""
        self.carry_out(self.policy.absorb(now))

    def carry_out(self, actions: list[Action]) -> None:
        """Do what the session decided."""
        for action in actions:
            if action is OUTPUT:
                self.flush_soon()
            elif action is CHANGED:
                self.changed.fire()
            elif isinstance(action, Deliver):
                self.inbox.extend(action.messages)
                self.inbox_bytes += action.nbytes
                link = self.policy.link
                if link is not None and self._inbox_full():
                    link.pause_reading()
                self.changed.fire()
            elif isinstance(action, Acknowledged):
                self.changed.fire()
                if self.durable is not None:
                    self.durable.record_acked(action.ack)  # a small write; its fsync comes with the next one
            elif isinstance(action, DropLink):
                link = action.link
                link.owner = NO_OWNER
                link.close(abort=action.abort)
            elif isinstance(action, Notify):
                self._dispatch(action.event)
            elif isinstance(action, Persist):
                self.background(self._persist_session())
            elif isinstance(action, Confirmed):
                if self._on_confirmed is not None:
                    self.loop.call_soon(self._on_confirmed, self)
            elif isinstance(action, Ended):
                self._ended(action)
        self._reschedule()

    def _ended(self, action: Ended) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        final = action.final
        if self.durable is None:
            self._dispatch(final)
        else:
            # recv() and the final event report the end only once the journal
            # holds it (a restart must not offer the finished session again).
            self._end_recorded = self.loop.run_in_executor(None, self.durable.record_end, action.ending.kind, action.ending.reason)
            self._end_recorded.add_done_callback(lambda _: self._dispatch(final))
            self.background(self._end_recorded)
        if self._on_end is not None:
            self.loop.call_soon(self._on_end, self)
        # The connection goes with the session, whoever ended it: the last
        # frames (a REJECT, a CLOSE_ACK) leave first, then FIN; RST if the
        # peer does not take them in time.
        self.loop.call_soon(self._release_link)

    async def _persist_session(self) -> None:
        durable = self.durable
        error: ReliableTCPError | None = None
        if durable is not None:
            engine = self.engine
            snapshot = (engine.session_id, engine.secret, engine.previous_secret)
            try:
                await self.loop.run_in_executor(None, durable.record_session, *snapshot)
            except ReliableTCPError as exc:
                error = exc
        self.carry_out(self.policy.persisted(error))

    # ------------------------------------------------------------ writing

    def flush_soon(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Hand everything the engine wants written to the transport, in one go."""
        self._flush_scheduled = False
        link = self.policy.link
        if link is None or link.lost or link.write_paused or not self.policy.output_allowed:
            return
        parts = self.engine.data_to_send_parts(self.loop.time())
        if parts:
            link.write(parts)

    def _inbox_full(self) -> bool:
        return len(self.inbox) >= self.options.max_queued_messages or self.inbox_bytes >= self.options.max_queued_bytes

    def resume_reading(self) -> None:
        link = self.policy.link
        if link is not None and link.read_paused and not self._inbox_full():
            link.resume_reading()

    # ----------------------------------------------------------- connections

    def open_link(self, link: LinkProtocol, *, hello: Hello | None = None, new_secret: bytes = b"") -> None:
        """Make ``link`` the current connection (the door for client.py and
        server.py; ``SessionPolicy.open_link`` decides). Raises HandshakeRejected."""
        actions, refusal = self.policy.open_link(link, self.loop.time(), order=link.order, hello=hello, new_secret=new_secret)
        if refusal is None:
            link.owner = self
        self.carry_out(actions)
        if refusal is not None:
            if not self.engine.client:
                raise refusal
            link.close(abort=True)

    def _drop_link(self, reason: str, cause: BaseException | None, *, abort: bool) -> None:
        link = self.policy.link
        if link is not None:
            self.carry_out(self.policy.link_lost(link, self.loop.time(), reason, cause, abort=abort))

    # ---------------------------------------------------- connection events

    def link_data(self, link: LinkProtocol, data: bytes) -> None:
        """ProtocolOwner: bytes arrived on the current connection."""
        self.carry_out(self.policy.received(link, data, self.loop.time()))

    def link_lost(self, link: LinkProtocol, error: BaseException | None) -> None:
        """ProtocolOwner: the connection ended."""
        if not self.policy.ended:
            reason = str(error) if error is not None else "connection closed by peer"
            self.carry_out(self.policy.link_lost(link, self.loop.time(), reason, error, abort=error is not None))
        self.changed.fire()

    def link_writable(self, link: LinkProtocol) -> None:
        """ProtocolOwner: the transport can take more."""
        if link is self.policy.link:
            self.flush_soon()

    # ---------------------------------------------------------------- timers

    def _reschedule(self) -> None:
        due = self.policy.next_timer()
        if due is not None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(due, self._fire_timers)

    def _fire_timers(self) -> None:
        """Fire what is due, with what the socket says (``SessionPolicy.liveness_check``)."""
        self._timer = None
        now = self.loop.time()
        link = self.policy.link
        check = self.policy.liveness_check(now, reading_paused=link is not None and link.read_paused)
        if check is None:
            self._reschedule()
            return
        error = link.pending_error() if link is not None and check.read_error else None
        judged = link is not None and check.judge
        self.carry_out(self.policy.timers_due(
            now, check, error=error, error_reason=(link_error_reason(error) or "") if error is not None else "",
            peer_ack_age=link.seconds_since_peer_ack() if judged and check.reading_paused and link is not None else None,
            input_waiting=judged and not check.reading_paused and link is not None and link.has_pending_input()))

    # ------------------------------------------------- the connecting side

    def connect_failed(self, error: BaseException, *, reason: str) -> None:
        """The Connector's door: an attempt failed; one not worth retrying
        ends the session (SessionPolicy.connect_failed)."""
        self.carry_out(self.policy.connect_failed(self.loop.time(), error, reason))

    async def wait_first_handshake(self, timeout: float, address: object) -> None:
        """connect(): return once the first handshake is done, or release
        everything and raise why not."""
        deadline = self.loop.time() + timeout
        policy = self.policy
        while not policy.ever_connected and policy.ending is None:
            if not await self.changed.wait(deadline):
                break
        if policy.ever_connected:
            return
        error = first_handshake_error(policy.ending, restored=self.restored, address=address, last_cause=policy.last_cause)
        self.abort()
        await self.teardown(None, reported=True)
        raise error

    async def abandon(self) -> None:
        """A connect that was cancelled: stop dialling and release everything.
        The session is not ended: its journal is kept as it is (released,
        not retired), so a later connect with it resumes."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.teardown(None, reported=False)  # the journal released (not ended) by the time it returns
