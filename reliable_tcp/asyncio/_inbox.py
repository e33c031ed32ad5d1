"""The receive queue of an asyncio channel: the twin of ``sync/_inbox.py``.

The same queue and the same rule: messages received in order and not yet
taken, bounded by a message count and a byte total. Where the threaded
inbox holds the connection's reader in ``wait_room``, this one is given two
callables: ``pause`` when a put leaves it full (the session pauses the
transport's reading, so TCP flow control slows the sender) and ``resume``
when a take leaves room. After :meth:`end`, what is queued can still be
taken; then every take raises the channel's end error (a fresh exception
each time). Everything runs on the loop's thread: no lock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from ._signal import Signal

__all__ = ["Inbox"]


class Inbox:
    """Messages received in order and not yet taken by the application."""

    def __init__(self, max_messages: int, max_bytes: int, *, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._pause = pause
        self._resume = resume
        self._readable = Signal()  # messages arrived, or the end
        self._messages: deque[bytes] = deque()
        self._bytes = 0
        self._taken = 0
        self._end: Callable[[], BaseException] | None = None

    @property
    def taken(self) -> int:
        """How many messages the application has taken so far."""
        return self._taken

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def full(self) -> bool:
        """Whether reading should stay paused until the application catches up."""
        return len(self._messages) >= self.max_messages or self._bytes >= self.max_bytes

    def put(self, messages: Iterable[bytes], nbytes: int) -> None:
        """Queue messages (in order); pause reading if that filled the queue."""
        self._messages.extend(messages)
        self._bytes += nbytes
        if self.full:
            self._pause()
        self._readable.fire()

    def end(self, error: Callable[[], BaseException], *, discard: bool = False) -> None:
        """No more messages will come: once the queue is drained, every take
        raises ``error()``. The first call wins. ``discard``: what is queued
        goes too (see the threaded Inbox)."""
        if self._end is None:
            self._end = error
        if discard:
            self._messages.clear()
            self._bytes = 0
        self._readable.fire()

    def resume_if_room(self) -> None:
        """Resume reading if there is room (a new connection starts reading;
        this is for one that was paused while the queue was full)."""
        if not self.full:
            self._resume()

    async def get(self) -> bytes:
        """The next message; raises the end error. Cancelled while waiting,
        it took nothing."""
        await self._wait_readable()
        message = self._messages.popleft()
        self._bytes -= len(message)
        self._taken += 1
        self.resume_if_room()
        return message

    def get_ready(self, max_messages: int) -> list[bytes]:
        """Up to ``max_messages`` messages already queued (none awaited)."""
        messages = self._messages
        out = [messages.popleft() for _ in range(min(max_messages, len(messages)))]
        self._bytes -= sum(map(len, out))
        self._taken += len(out)
        self.resume_if_room()
        return out

    async def _wait_readable(self) -> None:
        while not self._messages:
            if self._end is not None:
                raise self._end()
            await self._readable.wait(None)
