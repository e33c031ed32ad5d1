"""The shell's two shared threads: one fires every channel's timers, one runs callbacks.

**Timers.** Every channel, connected or detached, server or client, has
its deadlines fired by one thread, ``rtcp-timers``: it sleeps until the
earliest deadline of a heap and calls that channel's ``fire_timers(now)``,
which schedules the channel's next deadline. One owner for every timer, and
no thread per connection for heartbeats (3,000 sessions cost 3,000 threads
fewer). A channel's ``fire_timers`` takes its lock only briefly and makes
its socket probes outside it, so one channel can't hold up the others.

**Callbacks.** ``on_event`` callbacks run on ``rtcp-events``, in order, so a
slow callback delays other callbacks but never a heartbeat, a read or a write.

Both threads start when first needed and end after a moment with nothing
to do, so an idle process keeps none of them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

__all__ = ["TimerTarget", "Timers", "Callbacks", "TIMERS", "CALLBACKS"]

logger = logging.getLogger(__name__)

#: A shared thread with nothing to do ends after this many seconds.
_IDLE_EXIT = 1.0


class TimerTarget(Protocol):
    """Something with deadlines (a channel). It schedules its next deadline
    itself, under its own lock, so that an end (which cancels) can't race a
    reschedule and leave a finished target on the heap."""

    def fire_timers(self, now: float) -> None:
        """Do whatever is due at ``now``, and schedule the next deadline."""


class Timers:
    """A heap of deadlines and the one thread that fires them."""

    def __init__(self, name: str = "rtcp-timers") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, TimerTarget]] = []
        self._due: dict[TimerTarget, float] = {}  # each target's one live deadline
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, target: TimerTarget, when: float | None) -> None:
        """Fire ``target`` at ``when`` (or earlier, if it is already due
        earlier); None cancels."""
        with self._lock:
            if when is None:
                if self._due.pop(target, None) is not None:
                    self._changed.notify()  # the thread may be waiting for exactly that deadline
                return
            current = self._due.get(target)
            if current is not None and current <= when:
                return
            self._due[target] = when
            heapq.heappush(self._heap, (when, next(self._order), target))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif self._heap[0][2] is target:
                self._changed.notify()

    def cancel(self, target: TimerTarget) -> None:
        """Forget ``target``'s deadline."""
        self.schedule(target, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._due)

    def _next_due(self) -> tuple[TimerTarget, float] | None:
        """Wait for the earliest live deadline; None once idle for a while."""
        with self._lock:
            idle_since: float | None = None
            while True:
                heap = self._heap
                while heap and self._due.get(heap[0][2]) != heap[0][0]:
                    heapq.heappop(heap)  # superseded or cancelled
                now = time.monotonic()
                if not heap:
                    if idle_since is None:
                        idle_since = now
                    elif now - idle_since >= _IDLE_EXIT:
                        self._thread = None
                        return None
                    self._changed.wait(_IDLE_EXIT)
                    continue
                idle_since = None
                when, _, target = heap[0]
                if when > now:
                    self._changed.wait(when - now)
                    continue
                heapq.heappop(heap)
                del self._due[target]
                return target, now

    def _run(self) -> None:
        while (due := self._next_due()) is not None:
            target, now = due
            try:
                target.fire_timers(now)
            except Exception:  # a bug in one channel must not stop everyone's timers
                logger.exception("timer of %r failed", target)


class Callbacks:
    """Runs user callbacks in order on one shared thread."""

    def __init__(self, name: str = "rtcp-events") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._queue: deque[Callable[[], None]] = deque()
        self._thread: threading.Thread | None = None

    def call(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` soon, after every callback queued before it."""
        with self._lock:
            self._queue.append(callback)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            else:
                self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._ready.wait(_IDLE_EXIT)
                    if not self._queue:
                        self._thread = None
                        return
                callback = self._queue.popleft()
            try:
                callback()
            except Exception:  # a user callback must not stop the others
                logger.exception("event callback failed")


#: The process's shared instances.
TIMERS = Timers()
CALLBACKS = Callbacks()
