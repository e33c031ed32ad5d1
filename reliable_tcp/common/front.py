"""What both front ends' session machinery share and that does not depend on how they wait.

:class:`SessionFront` is the base of ``sync._session.SessionShell`` and
``asyncio._session.LoopSession``: the facts a front keeps beside its
:class:`~reliable_tcp.common.session.SessionPolicy` (the engine, the
options, the journal, the callbacks) and the loop that carries the
policy's actions out, each by a handler the front defines for its way of
waiting (a condition and a deferred close on threads, a future and a
transport call on the loop). A new action is added here once, and mypy
points at every front that lacks its handler.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, Generic, cast

from ..core.engine import SessionEngine
from ..core.frames import Hello
from ..durable.session_journal import Durable
from ..exceptions import ReliableTCPError, SessionHandedOver
from .ending import EndKind, Ending, Unacked
from .options import ShellOptions
from .session import CHANGED, OUTPUT, Acknowledged, Action, Confirmed, Deliver, DropLink, Ended, L, Notify, Persist, SessionPolicy
from .status import ChannelEvent, ChannelState, ChannelStatistics, channel_state_of, statistics_of

__all__ = ["SessionFront"]

_ids = itertools.count(1)


class SessionFront(Generic[L]):
    """One session's machinery on some front end (``L``: its connection type)."""

    def __init__(
        self,
        engine: SessionEngine,
        options: ShellOptions,
        front: str,
        *,
        durable: Durable | None,
        restored: bool,
        on_end: Callable[[Any], None] | None,
        on_confirmed: Callable[[Any], None] | None,
    ) -> None:
        self._name = f"{front}-{'client' if engine.client else 'server'}-{next(_ids)}"
        self.policy: SessionPolicy[L] = SessionPolicy(
            engine, self._name, durable=durable is not None, restored=restored, wants_events=options.on_event is not None,
            proving_time=options.backoff.maximum)
        self.engine = engine
        self.options = options
        self.durable = durable
        #: True for a session brought back from a journal after a restart.
        self.restored = restored
        self.committed_base = engine.committed  # what was committed before the inbox's first message
        self._on_end = on_end
        self._on_confirmed = on_confirmed

    @property
    def name(self) -> str:
        """The channel's name in logs and thread names (``rtcp-client-3``)."""
        return self._name

    @property
    def session_id(self) -> str:
        """The session id in hex (empty until the first handshake)."""
        session_id = self.engine.session_id
        return session_id.hex() if any(session_id) else ""

    def _state(self) -> ChannelState:
        return channel_state_of(self.engine.state, self.policy.ever_connected)

    def _statistics(self, queued_messages: int) -> ChannelStatistics:
        policy = self.policy
        return statistics_of(self.engine, ever_connected=policy.ever_connected, disconnects=policy.disconnects,
                             queued_messages=queued_messages, last_recovery_time=policy.last_recovery,
                             failed_attempts=policy.failed_attempts)

    def _restored_end(self, reason: str, unacked: Unacked) -> list[Action]:
        """A journal says this session was lost before the restart: it ends
        now, so its owner is told (once) what was never acknowledged."""
        return self.policy.end(Ending.of(EndKind.LOST, reason, unacked, None))

    def _session_record(self) -> tuple[bytes, bytes, bytes]:
        """What the journal's session record holds: the id and both secrets."""
        engine = self.engine
        return engine.session_id, engine.secret, engine.previous_secret

    # ----------------------------------------------------- carrying actions out

    def carry_out(self, actions: list[Action]) -> None:
        """Do what the policy decided, in order, then ask for the next timer."""
        for action in actions:
            if action is OUTPUT:
                self._output_ready()
            elif action is CHANGED:
                self._wake_waiters()
            elif isinstance(action, Deliver):
                self._deliver(action.messages, action.nbytes)
            elif isinstance(action, Acknowledged):
                self._acknowledged(action.ack)
            elif isinstance(action, DropLink):
                self._close_link(cast("L", action.link), action.abort)  # the policy holds only this front's links
            elif isinstance(action, Notify):
                self._notify(action.event)
            elif isinstance(action, Persist):
                self._persist()
            elif isinstance(action, Confirmed):
                if self._on_confirmed is not None:
                    self._confirmed(self._on_confirmed)
            elif isinstance(action, Ended):
                self._ended(action)
        self._reschedule()

    def absorb(self, now: float) -> None:
        """Act on what the engine did (after a send, a commit or a close)."""
        self.carry_out(self.policy.absorb(now))

    def _admit(self, link: L, now: float, order: int, hello: Hello | None, new_secret: bytes) -> bool:
        """Ask the policy whether ``link`` may carry the session and carry its
        answer out. On the listening side a refusal is raised (the listener
        sends it); on the connecting side it means the session is stopping:
        False, and the front closes the link."""
        actions, refusal = self.policy.open_link(link, now, order=order, hello=hello, new_secret=new_secret)
        self.carry_out(actions)
        if refusal is not None and not self.engine.client:
            raise refusal
        return refusal is None

    def _notify(self, event: ChannelEvent | None) -> None:
        callback = self.options.on_event
        if event is not None and callback is not None:
            self._call_back(callback, event)

    def _reschedule(self) -> None:
        due = self.policy.next_timer()
        if due is not None:
            self._schedule(due)

    def _mark_handed_over(self, reason: str) -> None:
        """A drain's hand-over, before the front takes the journal away
        (lock held, or on the loop). The flag comes first: a commit that
        then finds no journal knows why and raises, instead of passing for
        done. The queue goes too: this process can't commit it, and the
        restarted listener delivers it again."""
        self.policy.hand_over(reason)
        self._drop_received(lambda: SessionHandedOver(reason))
        self._wake_waiters()

    @staticmethod
    def _record_session(durable: Durable, record: tuple[bytes, bytes, bytes]) -> ReliableTCPError | None:
        """Journal the session record (I/O: threads call this outside their
        lock, the loop in its executor); the journal's refusal, if any."""
        try:
            durable.record_session(*record)
        except ReliableTCPError as exc:
            return exc
        return None

    def _take_journal(self, *, reported: bool) -> Callable[[], None] | None:
        """The journal leaves the session (teardown): what closes it, to run
        outside any lock or off the loop. Finished if the session ended
        (retired if ``reported``: the owner has been told), else released
        unchanged; None if there is no journal."""
        durable, self.durable = self.durable, None
        if durable is None:
            return None
        ending = self.policy.ending
        if ending is None:
            return durable.release
        kind = ending.kind
        return lambda: durable.finish(kind, reported=reported)

    # The handlers each front defines for its way of waiting.

    def _output_ready(self) -> None:
        raise NotImplementedError

    def _wake_waiters(self) -> None:
        raise NotImplementedError

    def _drop_received(self, error: Callable[[], BaseException]) -> None:
        """Empty the receive queue and end it with ``error``."""
        raise NotImplementedError

    def _deliver(self, messages: tuple[bytes, ...], nbytes: int) -> None:
        raise NotImplementedError

    def _acknowledged(self, ack: int) -> None:
        raise NotImplementedError

    def _close_link(self, link: L, abort: bool) -> None:
        raise NotImplementedError

    def _call_back(self, callback: Callable[[ChannelEvent], None], event: ChannelEvent) -> None:
        """Run an on_event callback, off the front's own path."""
        raise NotImplementedError

    def _schedule(self, due: float) -> None:
        """Fire the timers at ``due`` (sooner than the timer the front holds)."""
        raise NotImplementedError

    def _persist(self) -> None:
        raise NotImplementedError

    def _confirmed(self, callback: Callable[[Any], None]) -> None:
        raise NotImplementedError

    def _ended(self, action: Ended) -> None:
        raise NotImplementedError

