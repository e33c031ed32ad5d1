"""How coroutines wait for a change on the loop: the asyncio counterpart of
the threaded front's conditions (``sync/_deadline.py``)."""

from __future__ import annotations

import asyncio

__all__ = ["Signal"]


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
