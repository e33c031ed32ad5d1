"""The asyncio channel: the same session engine as the threaded one, driven by the event loop.

No thread per connection: the loop reads (an ``asyncio.Protocol`` feeds the
engine), writes (the engine's output is handed to the transport once per
loop iteration, so many sends become one write), and fires the engine's
timers (``loop.call_at`` on its next deadline). Backpressure both ways: a
full window suspends ``send``; a full receive queue pauses reading.

What is shared with the threaded front end, not copied: the engine and
its state table, the options and their defaults, the exceptions and how a
session's end maps to them (``_ending.Ending``), the journal
(``_durable.Durable``, its fsyncs run in the loop's executor with group
commit), the socket probes, the statistics.

Cancellation: a coroutine cancelled while it waits has done nothing it
does not say. ``send`` queues its message only after the wait, in one
step; the ``CancelledError`` (or the ``TimeoutError`` of an enclosing
``asyncio.timeout()``, through its ``__cause__``) carries ``queued``:
0 means the message was not queued and will never be sent, 1 that it was
and will be delivered (with a journal, a cancellation that arrives while
the queued message is being made durable is held back until it is, then
raised with ``queued`` = 1). A cancelled ``send_many`` may have queued a
prefix: ``queued`` says how long. No ``queued`` at all means the task was
cancelled before ``send`` ever ran: nothing was queued. ``recv`` takes a message only after the
wait, so a cancelled ``recv`` took nothing; ``flush``, ``accept`` and
``close`` change nothing by being cancelled but what they already started.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from .. import events as ev
from .._durable import Durable
from .._ending import Ending, Unacked
from .._transport import link_error_reason
from ..engine import SessionEngine
from ..exceptions import (
    ChannelClosed,
    HandshakeRejected,
    JournalWriteFailed,
    ReliableTCPError,
    UsageError,
)
from ..frames import Hello, RejectReason
from ..options import ShellOptions
from ..state import LIVE_STATES, TERMINAL_STATES
from ..status import ChannelEvent, ChannelState, ChannelStatistics, channel_state_of, statistics_of
from ._protocol import NO_OWNER, LinkProtocol

__all__ = ["Channel"]

logger = logging.getLogger(__name__)

#: After the session ended: how long the last frames may take to leave.
_FINAL_FLUSH = 2.0
#: close(timeout): the share of the budget kept for the close handshake.
_HANDSHAKE_SHARE = 0.25

_ids = itertools.count(1)


class _Signal:
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


class Channel:
    """A reliable, ordered, exactly-once message channel for asyncio programs.

    Get one from :func:`reliable_tcp.asyncio.connect` or
    :meth:`reliable_tcp.asyncio.Listener.accept`. Same promises, options
    and exceptions as :class:`reliable_tcp.Channel`; every coroutine may be
    cancelled safely (see the module docstring).
    """

    def __init__(
        self,
        engine: SessionEngine,
        shell: ShellOptions,
        *,
        durable: Durable | None = None,
        restored: bool = False,
        on_end: Callable[[Channel], None] | None = None,
        on_confirmed: Callable[[Channel], None] | None = None,
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
        self._changed = _Signal()  # anything a waiter may be waiting for
        self._inbox: deque[bytes] = deque()
        self._inbox_bytes = 0
        self._taken = 0
        self._committed_base = engine.committed
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
        self._reschedule()

    # -------------------------------------------------------------- queries

    @property
    def name(self) -> str:
        """The channel's name in logs."""
        return self._name

    @property
    def state(self) -> ChannelState:
        """The channel's current state."""
        return channel_state_of(self._engine.state, self._ever_connected)

    @property
    def session_id(self) -> str:
        """The session id in hex (empty until the first handshake)."""
        session_id = self._engine.session_id
        return session_id.hex() if any(session_id) else ""

    @property
    def last_sent_seq(self) -> int:
        """Sequence number of the last message sent."""
        return self._engine.next_seq - 1

    @property
    def last_committed_seq(self) -> int:
        """Sequence number of the last received message committed."""
        return self._engine.committed

    @property
    def last_received_seq(self) -> int:
        """Sequence number of the last message ``recv`` returned."""
        return self._committed_base + self._taken

    def statistics(self) -> ChannelStatistics:
        """A frozen snapshot of the counters."""
        return statistics_of(self._engine, ever_connected=self._ever_connected, disconnects=self._disconnects,
                             queued_messages=len(self._inbox), last_recovery_time=self._last_recovery)

    # ------------------------------------------------------------ messaging

    async def send(self, data: bytes) -> int:
        """Queue one message; return its sequence number. Waits while the
        window is full (``asyncio.timeout()`` bounds it). Raises like
        :meth:`reliable_tcp.Channel.send`."""
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise UsageError(f"send takes bytes, not {type(data).__name__}")
            data = bytes(data)
        return await self._queue([data])

    async def send_many(self, messages: Iterable[bytes]) -> int:
        """Queue several messages in order; return the sequence number of the last."""
        pending = [m if type(m) is bytes else bytes(m) for m in messages]
        return await self._queue(pending) if pending else self.last_sent_seq

    async def _queue(self, pending: list[bytes]) -> int:
        engine = self._engine
        engine.check_message_size(max(map(len, pending)))
        queued = 0
        seq = 0
        position = None
        try:
            while queued < len(pending):
                batch = pending[queued:] if queued else pending
                while not (self._closing or self._ending is not None or engine.can_send(len(batch[0]))):
                    await self._changed.wait(None)
                self._raise_if_closed()
                engine.check_sendable()
                if self._durable is not None:
                    batch = batch[: engine.room_for(batch)]
                    position = self._durable.record_sent(engine.next_seq, batch)  # journaled exactly when queued
                first, count = engine.send_messages(batch, self._loop.time())
                queued += count
                seq = first + count - 1
                self._flush_soon()
            if self._durable is not None and position is not None:
                await self._made_durable(position)
        except asyncio.CancelledError as exc:
            # The caller can tell what a cancelled send did: ``queued`` is how
            # many of its messages were queued (and will be delivered).
            exc.queued = queued  # type: ignore[attr-defined]
            raise
        return seq

    async def _made_durable(self, position: int) -> None:
        """Wait for the fsync off the loop. A cancellation meanwhile is held
        back until the queued messages are durable, then raised: what was
        queued stays queued, and the caller learns how much from ``queued``."""
        assert self._durable is not None
        work = asyncio.ensure_future(self._loop.run_in_executor(None, self._durable.wait_durable, position))
        cancelled: asyncio.CancelledError | None = None
        while not work.done():
            try:
                await asyncio.shield(work)
            except asyncio.CancelledError as exc:
                if work.cancelled():
                    raise
                cancelled = exc
        if cancelled is not None:
            if work.exception() is not None:
                logger.warning("%s: a cancelled send was not made durable: %s", self._name, work.exception())
            raise cancelled
        work.result()

    async def flush(self) -> None:
        """Wait until the peer has acknowledged every message sent so far."""
        engine = self._engine
        while engine.unacked_count and self._ending is None:
            await self._changed.wait(None)
        if self._ending is not None and engine.unacked_count:
            raise self._ending.exception()

    async def recv(self) -> bytes:
        """The next message, in order; raises like :meth:`reliable_tcp.Channel.recv`."""
        if self._durable is not None and self._shell.auto_commit:
            await self.commit()
        while not self._inbox:
            if self._ending is not None:
                raise self._ending.exception()
            await self._changed.wait(None)
        message = self._inbox.popleft()
        self._inbox_bytes -= len(message)
        self._taken += 1
        self._resume_reading()
        return message

    async def recv_many(self, max_messages: int = 1024) -> list[bytes]:
        """Up to ``max_messages`` messages at once (at least one), in order."""
        first = await self.recv()
        out = [first]
        while self._inbox and len(out) < max_messages:
            message = self._inbox.popleft()
            self._inbox_bytes -= len(message)
            out.append(message)
        self._taken += len(out) - 1
        self._resume_reading()
        return out

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            try:
                yield await self.recv()
            except ChannelClosed:
                return

    async def commit(self) -> None:
        """Confirm every message ``recv`` has returned so far (see
        :meth:`reliable_tcp.Channel.commit`); the journal's fsync runs off the loop."""
        upto = self.last_received_seq
        if upto <= self._engine.committed:
            return
        if self._durable is not None:
            try:
                await self._loop.run_in_executor(None, self._durable.record_consumed, upto)
            except JournalWriteFailed as exc:
                logger.warning("%s: commit not journaled, retried at the next one: %s", self._name, exc)
                return
        if self._engine.state not in TERMINAL_STATES:
            now = self._loop.time()
            self._engine.commit(upto, now)
            self._absorb(now)

    # --------------------------------------------------------------- ending

    async def close(self, timeout: float | None = 10.0) -> None:
        """Graceful close within ``timeout``, as :meth:`reliable_tcp.Channel.close`.
        Cancelling it stops the wait, not the close: that goes on in the background."""
        if self._closer is None:
            self._closer = asyncio.ensure_future(self._close(timeout))
        await asyncio.shield(self._closer)
        if self._ending is not None and self._ending.reportable and not self._close_reported:
            self._close_reported = True
            raise self._ending.exception()
        self._close_reported = True

    async def _close(self, timeout: float | None) -> None:
        deadline = None if timeout is None else self._loop.time() + timeout
        self._closing = True
        self._changed.fire()
        engine = self._engine
        flush_deadline = None if deadline is None else deadline - _HANDSHAKE_SHARE * max(0.0, deadline - self._loop.time())
        while engine.unacked_count and self._ending is None:
            if not await self._changed.wait(flush_deadline):
                break
        self._begin_close()
        await self._finish_close(deadline)

    def _begin_close(self) -> None:
        self._closing = True
        self._changed.fire()
        if self._ending is None:
            now = self._loop.time()
            self._engine.close(now)
            self._absorb(now)

    async def _finish_close(self, deadline: float | None, *, reported: bool = True) -> None:
        while self._ending is None:
            if not await self._changed.wait(deadline):
                self._drop_link("close timed out", None, abort=False)
                if self._ending is None:
                    self._record_end(Ending.of("closed", "close timed out", self._engine.unacked(), None))
                break
        await self._teardown(deadline, reported=reported)

    def abort(self) -> Unacked:
        """End the session at once; return the ``(seq, payload)`` discarded
        (the peer is told, as :meth:`reliable_tcp.Channel.abort`)."""
        if self._ending is None:
            now = self._loop.time()
            self._engine.abort(now)
            self._absorb(now)
        self._flush()
        ending = self._ending
        unacked = ending.unacked if ending is not None else ()
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        link = self._link
        if link is not None:
            link.close(abort=False)  # the REJECT is buffered: it leaves, then FIN
        self._finish_durable(reported=True)
        if unacked:
            logger.warning("%s: aborted with %d unacknowledged messages", self._name, len(unacked))
        return unacked

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()  # as the threaded channel: the owner is told of anything unacknowledged

    def __repr__(self) -> str:
        return f"<asyncio Channel {self._name} {self.state.value} session={self.session_id[:8]}>"

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
            self._notify("failed", ending.reason)
        else:
            self._notify("closed", ending.reason)
        if self._durable is not None:
            self._background(self._loop.run_in_executor(None, self._durable.record_end, ending.kind, ending.reason))
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
        self._finish_durable(reported=reported)

    def _finish_durable(self, *, reported: bool) -> None:
        durable, self._durable = self._durable, None
        if durable is None:
            return
        if self._ending is not None:
            kind = self._ending.kind
            self._background(self._loop.run_in_executor(None, lambda: durable.finish(kind, reported=reported)))
        else:
            self._background(self._loop.run_in_executor(None, durable.release))

    def _background(self, awaitable: Any) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ events

    def _notify(self, kind: str, detail: str = "", replayed: int = 0) -> None:
        callback = self._shell.on_event
        if callback is not None:
            event = ChannelEvent(kind, self.state, detail, replayed)
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
            self._notify("connected", self.session_id)
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
        server.py; as the threaded Channel._open_link). Raises HandshakeRejected."""
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
