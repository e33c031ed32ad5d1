"""Deadlines for blocking calls: one place for "wait until this holds, or time out"."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Deadline"]


class Deadline:
    """A point in monotonic time by which a call must return; ``None``: never.

    Every public call that takes a timeout builds one at its start and hands
    it down, so nested waits (a flush inside a close, a join inside a
    teardown) share one budget instead of each starting its own.
    """

    __slots__ = ("when",)

    def __init__(self, timeout: float | None) -> None:
        self.when = None if timeout is None else time.monotonic() + max(0.0, timeout)

    @classmethod
    def at(cls, when: float | None) -> Deadline:
        """A deadline at an absolute monotonic time."""
        deadline = cls(None)
        deadline.when = when
        return deadline

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None without a deadline."""
        return None if self.when is None else max(0.0, self.when - time.monotonic())

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return self.when is not None and time.monotonic() >= self.when

    def earlier(self, seconds: float | None) -> Deadline:
        """This deadline, or ``seconds`` from now if that comes first."""
        if seconds is None:
            return self
        other = Deadline(seconds)
        if self.when is None or (other.when is not None and other.when < self.when):
            return other
        return self

    def before(self, reserve: float) -> Deadline:
        """A deadline ``reserve`` seconds ahead of this one (no earlier than now)."""
        if self.when is None:
            return self
        return Deadline.at(max(time.monotonic(), self.when - reserve))

    def wait(self, condition: threading.Condition, predicate: Callable[[], bool]) -> bool:
        """Wait on ``condition`` (whose lock the caller holds) until
        ``predicate()`` holds; False if the deadline came first."""
        while not predicate():
            remaining = self.remaining()
            if remaining is not None and remaining <= 0:
                return False
            condition.wait(remaining)
        return True

    def join(self, thread: threading.Thread) -> bool:
        """Join ``thread`` within the deadline; whether it ended."""
        if thread is not threading.current_thread():
            thread.join(self.remaining())
        return not thread.is_alive() or thread is threading.current_thread()
