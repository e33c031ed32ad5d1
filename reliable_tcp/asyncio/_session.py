"""The machinery under the asyncio channel: this file only waits and moves bytes.

``LoopSession`` runs one session on the event loop: it feeds the shared
session (``common/session.py``, where every decision lives) what a
connection reads (``link_data``) or how it ended (``link_lost``), fires its
timers (``_timers.py``, in shared slots) with what the socket says, and carries out the
actions it returns: the receive queue (reading paused while it is full),
output handed to the transport once per loop iteration (``flush_soon``),
journal writes in the loop's executor, events. The public ``Channel``
(channel.py) holds one and carries the API; ``client.Connector`` and
``server.Listener`` attach connections through one door, ``open_link``.
Its attributes without an underscore are for those three. The asyncio
twin of the threaded ``sync/_session.py``; nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..common.consumer import ConsumerRule
from ..common.ending import Unacked
from ..common.front import SessionFront
from ..common.options import ShellOptions
from ..common.session import Ended, gather_evidence
from ..common.status import ChannelEvent, ChannelState, ChannelStatistics
from ..common.timing import FINAL_FLUSH, JOURNAL_FINISH, REJECT_LINGER
from ..core.engine import SessionEngine
from ..core.frames import Hello
from ..durable.session_journal import Durable
from ._inbox import Inbox
from ._link import NO_OWNER, LinkProtocol
from ._signal import Signal
from ._timers import timers_of

if TYPE_CHECKING:
    from .channel import Channel

__all__ = ["LoopSession"]

logger = logging.getLogger(__name__)


class LoopSession(SessionFront[LinkProtocol]):
    """One session's connection, timers, inbox and end, on the event loop
    (all of it runs on the loop's thread; nothing here needs a lock). The
    decisions are the shared :class:`~reliable_tcp.common.session.SessionPolicy`'s;
    :class:`~reliable_tcp.common.front.SessionFront` dispatches each of its
    actions to a handler here."""

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
        super().__init__(engine, shell, "rtcp-async", durable=durable, restored=restored, on_end=on_end, on_confirmed=on_confirmed)
        self.loop = asyncio.get_running_loop()
        #: The public channel that carries this session's API (set by it).
        self.channel: Channel | None = None
        self.changed = Signal()  # the connection, the state, acks, the end: what senders and close wait for
        self.inbox = Inbox(shell.max_queued_messages, shell.max_queued_bytes, pause=self._pause_reading, resume=self._resume_reading)
        # A durable channel's consumer: recv waits under this lock, and the
        # rule says whose uncommitted messages they are (common/consumer.py).
        self.consumer_lock = asyncio.Lock()
        self.consumers: ConsumerRule[asyncio.Task[object] | None] = ConsumerRule(
            lambda task: task is not None and not task.done(), lambda task: f"task {task.get_name() if task else None!r}")
        self._flush_scheduled = False
        self._handling_input = False  # inside link_data
        self._output_waits = False  # output arose there
        self._timers = timers_of(self.loop)
        self.tasks: set[asyncio.Task[Any]] = set()
        #: Commits being written to the journal (off the loop).
        self.journal_writes: set[asyncio.Future[None]] = set()
        self.closer: asyncio.Future[None] | None = None
        self._reschedule()

    @property
    def state(self) -> ChannelState:
        """The channel state the application sees."""
        return self._state()

    def statistics(self) -> ChannelStatistics:
        """A frozen snapshot of the counters."""
        return self._statistics(len(self.inbox))

    def begin_close(self) -> None:
        """Refuse new sends and send CLOSE behind what is queued (also the
        listener's door, so it can start every session's close at once)."""
        self.carry_out(self.policy.close(self.loop.time()))

    def move_away(self, reason: str) -> None:
        """The listener drains: end this session's connection in order (FIN)
        and keep the session, for its client's resume after the restart."""
        link = self.policy.link
        if link is not None:
            self.carry_out(self.policy.link_lost(link, self.loop.time(), reason, None, abort=False))

    async def hand_over(self, deadline: float | None, reason: str) -> None:
        """A draining listener is done: release the session unchanged in its
        journal for the restarted listener; the channel's calls raise
        SessionHandedOver(``reason``) from now on."""
        self._timers.cancel(self)  # inert from now on: no resume window runs out in this process
        self._mark_handed_over(reason)
        await self.teardown(deadline, reported=False)

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
            link.end_after_reject(self.loop, REJECT_LINGER)  # the REJECT is buffered: it leaves, then FIN
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
        self.loop.call_later(FINAL_FLUSH, functools.partial(link.close, abort=True))

    def end_restored(self, reason: str, unacked: Unacked) -> None:
        """A journal says this session was lost before the restart."""
        self.carry_out(self._restored_end(reason, unacked))

    async def teardown(self, deadline: float | None, *, reported: bool) -> None:
        self.policy.stop()
        self.changed.fire()
        for task in list(self.tasks):
            task.cancel()
        link = self.policy.link
        if link is not None:
            self.flush()
            link.close(abort=False)
            wait = FINAL_FLUSH if deadline is None else max(0.0, min(FINAL_FLUSH, deadline - self.loop.time()))
            try:
                await asyncio.wait_for(link.closed_event.wait(), wait)
            except TimeoutError:
                link.close(abort=True)
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=FINAL_FLUSH)
        if self.journal_writes:
            await asyncio.wait(set(self.journal_writes), timeout=JOURNAL_FINISH)  # a commit's record is written whole
        finishing = self.finish_durable(reported=reported)
        if finishing is not None:
            # As the threaded close: the journal is closed (deleted after a
            # complete close) and its lock released before close() returns,
            # so the next connect with it in this process finds it free.
            await asyncio.wait({finishing}, timeout=JOURNAL_FINISH)

    def finish_durable(self, *, reported: bool) -> asyncio.Future[None] | None:
        """Close the journal off the loop (finished, or released if the session
        has not ended); the work, or None if there is no journal."""
        close_journal = self._take_journal(reported=reported)
        if close_journal is None:
            return None
        work = self.loop.run_in_executor(None, close_journal)
        self.background(work)
        return work

    def background(self, awaitable: Any) -> None:
        task = asyncio.ensure_future(awaitable)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------ actions

    def _call_back(self, callback: Callable[[ChannelEvent], None], event: ChannelEvent) -> None:
        self.loop.call_soon(callback, event)

    # The handlers of the policy's actions (SessionFront.carry_out).

    def _output_ready(self) -> None:
        if self._handling_input:
            self._output_waits = True  # link_data writes it once the bytes are handled
        else:
            self.flush_soon()

    def _wake_waiters(self) -> None:
        self.changed.fire()

    def _drop_received(self, error: Callable[[], BaseException]) -> None:
        self.inbox.end(error, discard=True)

    def _deliver(self, messages: tuple[bytes, ...], nbytes: int) -> None:
        self.inbox.put(messages, nbytes)

    def _acknowledged(self, ack: int) -> None:
        self.changed.fire()
        if self.durable is not None:
            self.durable.record_acked(ack)  # a small write; its fsync comes with the next one

    def _close_link(self, link: LinkProtocol, abort: bool) -> None:
        link.owner = NO_OWNER
        link.close(abort=abort)

    def _persist(self) -> None:
        self.background(self._persist_session())

    def _confirmed(self, callback: Callable[[Any], None]) -> None:
        self.loop.call_soon(callback, self)

    def _ended(self, action: Ended) -> None:
        self._timers.cancel(self)
        final, ending = action.final, action.ending
        if self.durable is None:
            self.inbox.end(ending.exception)
            self._notify(final)
        else:
            # recv() and the final event report the end only once the journal
            # holds it: an application that saw the end and died must not be
            # offered the finished session again by the restart.
            def report(_: object) -> None:
                self.inbox.end(ending.exception)
                self._notify(final)

            recorded = self.loop.run_in_executor(None, self.durable.record_end, ending.kind, ending.reason)
            recorded.add_done_callback(report)
            self.background(recorded)
        if self._on_end is not None:
            self.loop.call_soon(self._on_end, self)
        # The connection goes with the session, whoever ended it: the last
        # frames (a REJECT, a CLOSE_ACK) leave first, then FIN; RST if the
        # peer does not take them in time.
        self.loop.call_soon(self._release_link)

    async def _persist_session(self) -> None:
        durable = self.durable
        error = None
        if durable is not None:
            error = await self.loop.run_in_executor(None, self._record_session, durable, self._session_record())
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

    def _pause_reading(self) -> None:
        """The inbox is full: stop reading, so TCP flow control slows the sender."""
        link = self.policy.link
        if link is not None:
            link.pause_reading()

    def _resume_reading(self) -> None:
        link = self.policy.link
        if link is not None and link.read_paused:
            link.resume_reading()

    # ----------------------------------------------------------- connections

    def open_link(self, link: LinkProtocol, *, hello: Hello | None = None, new_secret: bytes = b"") -> None:
        """Make ``link`` the current connection (the door for client.py and
        server.py; ``SessionPolicy.open_link`` decides). Raises HandshakeRejected."""
        if self._admit(link, self.loop.time(), link.order, hello, new_secret):  # (a refusal raises for the listener)
            link.owner = self
        else:
            link.close(abort=True)

    # ---------------------------------------------------- connection events

    def link_data(self, link: LinkProtocol, data: bytes) -> None:
        """ProtocolOwner: bytes arrived on the current connection. What they
        call for (a PONG, an ACK) is written before returning, in one write
        with whatever else waits: an idle session's PING costs no second
        turn of the loop."""
        self._handling_input = True
        try:
            self.carry_out(self.policy.received(link, data, self.loop.time()))
        finally:
            self._handling_input = False
        if self._output_waits:
            self._output_waits = False
            self.flush()

    def link_lost(self, link: LinkProtocol, error: BaseException | None) -> None:
        """ProtocolOwner: the connection ended."""
        if not self.policy.ended:
            self.carry_out(self.policy.link_ended(link, self.loop.time(), error))
        self.changed.fire()

    def link_writable(self, link: LinkProtocol) -> None:
        """ProtocolOwner: the transport can take more."""
        if link is self.policy.link:
            self.flush_soon()

    # ---------------------------------------------------------------- timers

    def _schedule(self, due: float) -> None:
        self._timers.schedule(self, due)

    def fire_timers(self) -> None:
        """The loop's timers (``_timers.LoopTimers``): fire what is due, with
        what the socket says (``SessionPolicy.liveness_check``)."""
        now = self.loop.time()
        link = self.policy.link
        check = self.policy.liveness_check(now, reading_paused=link is not None and link.read_paused)
        if check is None:
            self._reschedule()
            return
        self.carry_out(self.policy.timers_due(now, check, link, gather_evidence(link, check)))

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
        error = policy.first_handshake_error(address)
        if error is None:
            return
        self.abort()
        await self.teardown(None, reported=True)
        raise error

    async def abandon(self) -> None:
        """A connect that was cancelled: stop dialling and release everything.
        The session is not ended: its journal is kept as it is (released,
        not retired), so a later connect with it resumes."""
        self._timers.cancel(self)
        await self.teardown(None, reported=False)  # the journal released (not ended) by the time it returns
