"""The asyncio channel: the same session engine as the threaded one, driven by the event loop.

No thread per connection: the loop reads (an ``asyncio.Protocol`` feeds the
engine), writes (the engine's output is handed to the transport once per
loop iteration, so many sends become one write), and fires the engine's
timers (``loop.call_at`` on its next deadline). Backpressure both ways: a
full window suspends ``send``; a full receive queue pauses reading.

What is shared with the threaded front end, not copied: the engine and
its state table, the session policy (``common.session.SessionPolicy``),
the options and their defaults, the exceptions and how a session's end
maps to them (``common.ending.Ending``), the journal (``durable.Durable``;
its fsyncs run in the loop's executor with group commit), the socket
probes, the statistics. As there, a Channel holds its machinery (a
``_session.LoopSession``) and carries only the API.

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
import logging
from collections.abc import AsyncIterator, Iterable

from ..common import arguments
from ..common.ending import Unacked
from ..common.status import ChannelState, ChannelStatistics
from ..common.timing import HANDSHAKE_SHARE
from ..core.state import TERMINAL_STATES
from ..exceptions import ChannelClosed, JournalWriteFailed, SessionHandedOver
from ._session import LoopSession

__all__ = ["Channel"]

logger = logging.getLogger(__name__)


class Channel:
    """A reliable, ordered, exactly-once message channel for asyncio programs.

    Get one from :func:`reliable_tcp.asyncio.connect` or
    :meth:`reliable_tcp.asyncio.Listener.accept`. Same promises, options
    and exceptions as :class:`reliable_tcp.Channel`; every coroutine may be
    cancelled safely (see the module docstring).
    """

    __slots__ = ("_session", "__weakref__")

    def __init__(self, session: LoopSession) -> None:
        # The machinery (the connection, timers, the shared policy) is the
        # session's; the channel only carries the API. Made by connect() and
        # the listener, never by the application.
        self._session = session
        session.channel = self

    # -------------------------------------------------------------- queries

    @property
    def name(self) -> str:
        """The channel's name in logs."""
        return self._session.name

    @property
    def state(self) -> ChannelState:
        """The channel's current state."""
        return self._session.state

    @property
    def session_id(self) -> str:
        """The session id in hex (empty until the first handshake)."""
        return self._session.session_id

    @property
    def restored(self) -> bool:
        """True for a session brought back from a journal after a restart."""
        return self._session.restored

    @property
    def last_sent_seq(self) -> int:
        """Sequence number of the last message sent."""
        return self._session.engine.next_seq - 1

    @property
    def last_committed_seq(self) -> int:
        """Sequence number of the last received message committed."""
        return self._session.engine.committed

    @property
    def max_sendable_size(self) -> int:
        """The largest message :meth:`send` takes now: the smaller of this
        side's ``max_message_size`` and the limit the peer announced in the
        handshake (until one completed, the protocol's default)."""
        return self._session.engine.max_sendable_size

    @property
    def last_received_seq(self) -> int:
        """Sequence number of the last message ``recv`` returned."""
        return self._session.committed_base + self._session.inbox.taken

    def statistics(self) -> ChannelStatistics:
        """A frozen snapshot of the counters."""
        return self._session.statistics()

    # ------------------------------------------------------------ messaging

    async def send(self, data: bytes) -> int:
        """Queue one message; return its sequence number. Waits while the
        window is full (``asyncio.timeout()`` bounds it). Raises like
        :meth:`reliable_tcp.Channel.send`."""
        if type(data) is not bytes:
            data = arguments.message(data)
        return await self._queue([data])

    async def send_many(self, messages: Iterable[bytes]) -> int:
        """Queue several messages in order; return the sequence number of the last."""
        pending = arguments.messages(messages)
        return await self._queue(pending) if pending else self.last_sent_seq

    async def _queue(self, pending: list[bytes]) -> int:
        engine = self._session.engine
        engine.check_message_size(max(map(len, pending)))
        queued = 0
        seq = 0
        position = None
        try:
            while queued < len(pending):
                batch = pending[queued:] if queued else pending
                while not (self._session.policy.closing or self._session.policy.ending is not None or engine.can_send(len(batch[0]))):
                    await self._session.changed.wait(None)
                self._session.raise_if_closed()
                engine.check_sendable()
                if self._session.durable is not None:
                    batch = batch[: engine.room_for(batch)]
                    position = self._session.durable.record_sent(engine.next_seq, batch)  # journaled exactly when queued
                first, count = engine.send_messages(batch, self._session.loop.time())
                queued += count
                seq = first + count - 1
                self._session.flush_soon()
            if self._session.durable is not None and position is not None:
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
        assert self._session.durable is not None
        work = asyncio.ensure_future(self._session.loop.run_in_executor(None, self._session.durable.wait_durable, position))
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
                logger.warning("%s: a cancelled send was not made durable: %s", self._session.name, work.exception())
            raise cancelled
        work.result()

    async def flush(self) -> None:
        """Wait until the peer has acknowledged every message sent so far."""
        engine = self._session.engine
        while engine.unacked_count and self._session.policy.ending is None:
            await self._session.changed.wait(None)
        if self._session.policy.ending is not None and engine.unacked_count:
            raise self._session.policy.ending.exception()

    @property
    def acked_seq(self) -> int:
        """The highest sequence number the peer has acknowledged (as
        :attr:`reliable_tcp.Channel.acked_seq`)."""
        return self._session.engine.acked_seq

    async def wait_acked(self, seq: int, timeout: float | None = None) -> None:
        """Wait until the peer has acknowledged message ``seq``; raises like
        :meth:`reliable_tcp.Channel.wait_acked`. Cancelling it cancels only
        the wait (other waiters, and the message, are untouched)."""
        timeout = arguments.timeout(timeout)
        session = self._session
        policy = session.policy
        deadline = None if timeout is None else session.loop.time() + timeout
        while (receipt := policy.receipt(seq)) is False:
            if not await session.changed.wait(deadline):
                raise TimeoutError(
                    f"message {seq} was not acknowledged in time (acknowledged up to {session.engine.acked_seq})")
        if receipt is None:
            assert policy.ending is not None
            raise policy.ending.exception()

    async def recv(self) -> bytes:
        """The next message, in order; raises like :meth:`reliable_tcp.Channel.recv`
        (with a journal, one task consumes at a time, as one thread does there)."""
        if self._session.durable is None:
            return await self._take()
        async with self._session.consumer_lock:
            me = asyncio.current_task()
            self._session.consumers.check(me, self._uncommitted())
            if self._session.options.auto_commit:
                await self._commit()  # the application came back for more: it is done with the last one
            message = await self._take()
            self._session.consumers.took(me)
            return message

    def _uncommitted(self) -> int:
        return self.last_received_seq - self._session.engine.committed

    async def _take(self) -> bytes:
        return await self._session.inbox.get()

    async def recv_many(self, max_messages: int = 1024) -> list[bytes]:
        """Up to ``max_messages`` messages at once (at least one), in order."""
        max_messages = arguments.count(max_messages, "max_messages")
        first = await self.recv()
        # Nothing awaits from here on: the rest are taken by the same consumer.
        return [first, *self._session.inbox.get_ready(max_messages - 1)]

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
        if self._session.durable is not None:
            self._session.consumers.check(asyncio.current_task(), self._uncommitted())
        await self._commit()

    async def _commit(self) -> None:
        upto = self.last_received_seq
        if upto <= self._session.engine.committed:
            return
        durable = self._session.durable
        if durable is None and self._session.policy.handed_over is not None:
            raise SessionHandedOver(self._session.policy.handed_over)  # as the threaded commit: it can't reach the journal
        if durable is not None:
            writing = self._session.loop.run_in_executor(None, durable.record_consumed, upto)
            self._session.journal_writes.add(writing)  # a teardown waits for it before it closes the journal
            writing.add_done_callback(self._session.journal_writes.discard)
            try:
                await writing
            except JournalWriteFailed as exc:
                logger.warning("%s: commit not journaled, retried at the next one: %s", self._session.name, exc)
                return
        if self._session.engine.state not in TERMINAL_STATES:
            now = self._session.loop.time()
            self._session.engine.commit(upto, now)
            self._session.absorb(now)

    # --------------------------------------------------------------- ending

    async def close(self, timeout: float | None = 10.0) -> None:
        """Graceful close within ``timeout``, as :meth:`reliable_tcp.Channel.close`.
        Cancelling it stops the wait, not the close: that goes on in the background."""
        await self._close_and_report(arguments.timeout(timeout), commit=True)

    async def _close_and_report(self, timeout: float | None, *, commit: bool) -> None:
        if self._session.policy.handed_over is not None:
            return  # a drain gave the session to the restarted listener: nothing here to close
        if self._session.closer is None:
            self._session.closer = asyncio.ensure_future(self._close(timeout, commit=commit))
        await asyncio.shield(self._session.closer)
        report = self._session.policy.close_report()
        if report is not None:
            raise report

    async def _close(self, timeout: float | None, *, commit: bool) -> None:
        deadline = None if timeout is None else self._session.loop.time() + timeout
        if commit and self._session.policy.ending is None and not self._session.policy.closing:
            await self._commit()  # what recv() returned is done with: the handshake acknowledges it
        self._session.policy.closing = True
        self._session.changed.fire()
        engine = self._session.engine
        flush_deadline = None if deadline is None else deadline - HANDSHAKE_SHARE * max(0.0, deadline - self._session.loop.time())
        while engine.unacked_count and self._session.policy.ending is None:
            if not await self._session.changed.wait(flush_deadline):
                break
        self._session.begin_close()
        await self._session.finish_close(deadline)

    def abort(self) -> Unacked:
        """End the session at once; return the ``(seq, payload)`` discarded
        (the peer is told, as :meth:`reliable_tcp.Channel.abort`)."""
        if self._session.policy.handed_over is not None:
            return ()  # a drain gave the session to the restarted listener: it is not this process's to end
        unacked = self._session.abort()
        if unacked:
            logger.warning("%s: aborted with %d unacknowledged messages", self.name, len(unacked))
        return unacked

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # As the threaded channel: the owner is told of anything unacknowledged,
        # and an exception leaves what recv() returned uncommitted.
        await self._close_and_report(10.0, commit=exc_info[0] is None)

    def __repr__(self) -> str:
        return f"<asyncio Channel {self._session.name} {self.state.value} session={self.session_id}>"
