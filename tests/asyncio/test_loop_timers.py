"""The loop's session timers in shared slots (asyncio/_timers.py): never
early, at most a slot late, one loop timer per slot in use, and a session
that is cancelled or moved does not fire where it was."""

from __future__ import annotations

import asyncio
import logging

import pytest

from reliable_tcp.asyncio._timers import SLOT, LoopTimers, timers_of


class Target:
    def __init__(self, loop: asyncio.AbstractEventLoop, name: str, fired: list[tuple[str, float]]) -> None:
        self.loop = loop
        self.name = name
        self.fired = fired
        self.then: object = None  # what to do when fired (a callable)

    def fire_timers(self) -> None:
        self.fired.append((self.name, self.loop.time()))
        if callable(self.then):
            self.then()


async def wait_for_fired(fired: list[tuple[str, float]], count: int, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while len(fired) < count:
        assert asyncio.get_running_loop().time() < deadline, f"only {fired} fired"
        await asyncio.sleep(0.001)


def test_targets_fire_in_order_never_early_and_at_most_a_slot_late() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        timers = LoopTimers(loop)
        fired: list[tuple[str, float]] = []
        now = loop.time()
        dues = {"a": now + 0.030, "b": now + 0.010, "c": now + 0.0101, "d": now + 0.050}
        for name, due in dues.items():
            timers.schedule(Target(loop, name, fired), due)
        assert len(timers) == 4
        assert timers.handles <= 4
        await wait_for_fired(fired, 4)
        assert [name for name, _ in fired][:2] in (["b", "c"], ["c", "b"])
        assert [name for name, _ in fired][2:] == ["a", "d"]
        for name, at in fired:
            assert at >= dues[name] - loop._clock_resolution  # never early
            assert at <= dues[name] + SLOT + 0.5  # a slot late, plus a loaded machine's slack
        assert len(timers) == 0 and timers.handles == 0

    asyncio.run(main())


def test_sessions_due_in_one_slot_share_one_loop_timer() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        timers = LoopTimers(loop)
        fired: list[tuple[str, float]] = []
        base = (int(loop.time() / SLOT) + 100) * SLOT  # the start of a slot, half a second ahead
        for i in range(50):
            timers.schedule(Target(loop, str(i), fired), base + SLOT * (0.1 + i / 100))
        assert timers.handles == 1
        await wait_for_fired(fired, 50)
        assert sorted(int(name) for name, _ in fired) == list(range(50))

    asyncio.run(main())


def test_a_rescheduled_target_fires_once_at_its_new_deadline() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        timers = LoopTimers(loop)
        fired: list[tuple[str, float]] = []
        target = Target(loop, "t", fired)
        now = loop.time()
        timers.schedule(target, now + 0.02)
        timers.schedule(target, now + 0.08)  # later: the first slot's timer goes
        assert timers.handles == 1
        await wait_for_fired(fired, 1)
        assert fired[0][1] >= now + 0.08 - loop._clock_resolution
        await asyncio.sleep(0.05)
        assert len(fired) == 1

    asyncio.run(main())


def test_a_cancelled_target_does_not_fire_even_when_its_slot_does() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        timers = LoopTimers(loop)
        fired: list[tuple[str, float]] = []
        base = (int(loop.time() / SLOT) + 4) * SLOT
        first, second, alone = Target(loop, "first", fired), Target(loop, "second", fired), Target(loop, "alone", fired)
        timers.schedule(first, base + SLOT / 4)
        timers.schedule(second, base + SLOT / 2)  # the same slot
        timers.schedule(alone, base + 10 * SLOT)
        timers.cancel(alone)
        assert timers.handles == 1  # the cancelled one's slot timer went with it
        first.then = lambda: timers.cancel(second)  # fired first in the slot (first scheduled), it cancels the other
        await wait_for_fired(fired, 1)
        await asyncio.sleep(4 * SLOT)
        assert [name for name, _ in fired] == ["first"]
        assert len(timers) == 0 and timers.handles == 0

    asyncio.run(main())


def test_a_failing_target_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        timers = LoopTimers(loop)
        fired: list[tuple[str, float]] = []
        broken = Target(loop, "broken", fired)

        def fail() -> None:
            raise RuntimeError("a bug in one session")

        broken.then = fail
        due = loop.time() + 0.01
        timers.schedule(broken, due)
        timers.schedule(Target(loop, "fine", fired), due)
        await wait_for_fired(fired, 2)

    with caplog.at_level(logging.ERROR, logger="reliable_tcp.asyncio._timers"):
        asyncio.run(main())
    assert any("a bug in one session" in str(record.exc_info[1]) for record in caplog.records if record.exc_info)


def test_each_loop_has_its_own_timers() -> None:
    async def main() -> LoopTimers:
        loop = asyncio.get_running_loop()
        assert timers_of(loop) is timers_of(loop)
        return timers_of(loop)

    assert asyncio.run(main()) is not asyncio.run(main())
