"""One consumer at a time on a durable channel: the rule both fronts share.

With a journal, only committed messages are acknowledged, and a commit
covers every message handed out so far (``recv`` commits what it returned
before, each time it is called again). If a second thread (or task) took a
message while the first was still handling its own, the second's next
``recv`` would commit the first one's message too, and a crash then would
lose it: delivery would resume after it. So a durable channel is consumed
by one thread or task at a time, and the rule is enforced, not only
documented:

- ``recv`` waits for a message under the channel's consumer lock, so two
  consumers waiting at once never both take one;
- the messages taken and not yet committed belong to the consumer that took
  them, as long as it lives: ``recv``, ``recv_many`` or ``commit`` from
  another consumer raises UsageError until that one commits them (its next
  ``recv``, or ``commit()``) or ends (a thread that returned, a task that
  finished: handing the channel from one to the next works);
- ``close()`` commits everything: the application is done with it.

The front supplies what a consumer is (a thread, a task), whether one is
still alive, and its name for the error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from ..exceptions import UsageError

__all__ = ["ConsumerRule"]

Consumer = TypeVar("Consumer")


class ConsumerRule(Generic[Consumer]):
    """Who holds a durable channel's uncommitted messages. Not thread-safe:
    the front calls it under its consumer lock (reads from ``commit`` are
    single attribute reads)."""

    __slots__ = ("_alive", "_name", "_holder")

    def __init__(self, alive: Callable[[Consumer], bool], name: Callable[[Consumer], str]) -> None:
        self._alive = alive
        self._name = name
        self._holder: Consumer | None = None

    def check(self, consumer: Consumer, uncommitted: int) -> None:
        """Raise UsageError if ``uncommitted`` messages belong to another live consumer."""
        holder = self._holder
        if uncommitted and holder is not None and holder is not consumer and self._alive(holder):
            raise UsageError(
                f"{uncommitted} message(s) taken by {self._name(holder)} are not committed yet: a durable channel "
                "is consumed by one thread or task at a time (its next recv() or commit() there commits them); "
                "hand messages to workers yourself, or commit() before another consumer takes over"
            )

    def took(self, consumer: Consumer) -> None:
        """``consumer`` took messages: the uncommitted ones are its own now."""
        self._holder = consumer
