"""The shared timer and callback threads: order, cancellation, and ending when idle."""

from __future__ import annotations

import threading
import time

from helpers import wait_for
from reliable_tcp.sync._timers import Callbacks, Timers


class Target:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.fired = threading.Event()

    def fire_timers(self, now: float) -> None:
        self.log.append(self.name)
        self.fired.set()


def test_deadlines_fire_in_order_and_an_earlier_one_wins() -> None:
    timers = Timers("rtcp-test-timers")
    log: list[str] = []
    late, early = Target("late", log), Target("early", log)
    now = time.monotonic()
    timers.schedule(late, now + 0.2)
    timers.schedule(early, now + 0.5)
    timers.schedule(early, now + 0.05)  # moved earlier: the later entry is superseded
    assert late.fired.wait(5) and early.fired.wait(5)
    wait_for(lambda: len(timers) == 0, 5, "both to fire")
    assert log == ["early", "late"]


def test_a_cancelled_deadline_never_fires_and_the_idle_thread_ends() -> None:
    timers = Timers("rtcp-test-timers")
    log: list[str] = []
    target = Target("cancelled", log)
    timers.schedule(target, time.monotonic() + 30)  # the thread now waits 30 s for it
    timers.cancel(target)
    # Cancelling woke it: with nothing left it ends within a couple of seconds.
    wait_for(lambda: not any(t.name == "rtcp-test-timers" for t in threading.enumerate()), 5, "the thread to end")
    assert log == []


def test_callbacks_run_in_order_and_a_failing_one_does_not_stop_the_rest() -> None:
    callbacks = Callbacks("rtcp-test-events")
    seen: list[int] = []

    def fail() -> None:
        raise RuntimeError("a user callback's bug")

    callbacks.call(lambda: seen.append(1))
    callbacks.call(fail)
    callbacks.call(lambda: seen.append(2))
    wait_for(lambda: seen == [1, 2], 5, "both callbacks")
