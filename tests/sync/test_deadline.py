"""Deadline: one budget shared by nested waits."""

from __future__ import annotations

import threading
import time

from reliable_tcp.sync._deadline import Deadline


def test_remaining_never_negative_and_none_without_a_timeout() -> None:
    assert Deadline(None).remaining() is None and not Deadline(None).expired()
    gone = Deadline(0)
    assert gone.remaining() == 0 and gone.expired()


def test_before_and_earlier_stay_inside_the_budget() -> None:
    deadline = Deadline(10)
    assert deadline.when is not None
    assert deadline.before(4).when == deadline.when - 4
    assert deadline.earlier(1).when < deadline.when  # type: ignore[operator]
    assert deadline.earlier(100) is deadline
    assert Deadline(None).earlier(1).when is not None


def test_wait_returns_at_the_predicate_or_the_deadline() -> None:
    lock = threading.Lock()
    condition = threading.Condition(lock)
    started = time.monotonic()
    with lock:
        assert not Deadline(0.05).wait(condition, lambda: False)
        assert Deadline(0.05).wait(condition, lambda: True)
    assert time.monotonic() - started < 1
