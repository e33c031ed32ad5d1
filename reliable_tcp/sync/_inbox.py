"""The receive queue of a channel: messages waiting for ``recv``, bounded both ways."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable

from ._deadline import Deadline

__all__ = ["Inbox"]


class Inbox:
    """Messages received in order and not yet taken by the application.

    Bounded by a message count and a byte total: once either is reached,
    :meth:`wait_room` holds the connection's reader, so TCP flow control
    slows the sender instead of memory growing. After :meth:`end`, what is
    queued can still be taken; then every take raises the channel's end
    error (a fresh exception each time).

    It has its own lock, the innermost of the shell: the channel may call
    :meth:`put` and :meth:`end` while holding its own lock, but nothing here
    takes another lock, so ``recv`` never waits for the engine.
    """

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._readable = threading.Condition(self._lock)  # messages arrived, or the end
        self._room = threading.Condition(self._lock)  # the application took some
        self._messages: deque[bytes] = deque()
        self._bytes = 0
        self._taken = 0
        self._end: Callable[[], BaseException] | None = None
        self._reader_waiting = False  # the connection's reader waits for room

    @property
    def taken(self) -> int:
        """How many messages the application has taken so far."""
        return self._taken

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def full(self) -> bool:
        """Whether the reader should stop reading until the application catches up."""
        return len(self._messages) >= self.max_messages or self._bytes >= self.max_bytes

    def put(self, messages: Iterable[bytes], nbytes: int) -> None:
        """Queue messages (in order; the caller is the connection's reader)."""
        with self._lock:
            self._messages.extend(messages)
            self._bytes += nbytes
            self._readable.notify_all()

    def end(self, error: Callable[[], BaseException], *, discard: bool = False) -> None:
        """No more messages will come: once the queue is drained, every take
        raises ``error()``. The first call wins. ``discard``: what is queued
        goes too (a drain handed the session over: the restarted listener
        delivers these messages, which this process could not commit)."""
        with self._lock:
            if self._end is None:
                self._end = error
            if discard:
                self._messages.clear()
                self._bytes = 0
            self._readable.notify_all()
            self._room.notify_all()

    def interrupt(self) -> None:
        """Wake a reader waiting for room, so it notices its connection ended."""
        with self._lock:
            self._room.notify_all()

    def wait_room(self, stop: Callable[[], bool]) -> None:
        """Block while the queue is full, until ``stop()`` holds (checked after
        every :meth:`interrupt`) or the queue ends."""
        with self._lock:
            while self.full and self._end is None and not stop():
                self._reader_waiting = True
                self._room.wait()
                self._reader_waiting = False

    def get(self, timeout: float | None = None) -> bytes:
        """The next message; raises the end error, or TimeoutError."""
        with self._lock:
            messages = self._messages
            if not messages:
                self._wait_readable(Deadline(timeout))
            message = messages.popleft()
            self._bytes -= len(message)
            self._taken += 1
            if self._reader_waiting and not self.full:
                self._room.notify_all()
            return message

    def get_many(self, max_messages: int, timeout: float | None = None) -> list[bytes]:
        """Up to ``max_messages`` messages (at least one), in order."""
        with self._lock:
            messages = self._messages
            if not messages:
                self._wait_readable(Deadline(timeout))
            if len(messages) <= max_messages:
                out = list(messages)
                messages.clear()
            else:
                out = [messages.popleft() for _ in range(max_messages)]
            self._bytes -= sum(map(len, out))
            self._taken += len(out)
            if self._reader_waiting and not self.full:
                self._room.notify_all()
            return out

    def _wait_readable(self, deadline: Deadline) -> None:
        if not deadline.wait(self._readable, lambda: bool(self._messages) or self._end is not None):
            raise TimeoutError("no message arrived in time")
        if not self._messages:
            assert self._end is not None
            raise self._end()
