"""Every session's timer on one event loop, in slots of a few milliseconds.

A session's next deadline moves with nearly every frame, and an idle
listener of 10,000 sessions reschedules about 1,700 of them a second.
One ``loop.call_at`` per session per reschedule costs a TimerHandle and a
push onto the loop's heap of 10,000 handles, whose comparisons are Python
code (``TimerHandle.__lt__``): a large part of what an idle session cost.
Here deadlines are rounded up to the next slot of :data:`SLOT` seconds and
sessions due in the same slot share one ``call_at``: the loop's heap holds
one handle per slot in use, and most reschedules only move a session from
one dict to another. A timer fires at most :data:`SLOT` late, never early.
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from typing import Protocol

__all__ = ["SLOT", "LoopTimers", "TimerTarget", "timers_of"]

logger = logging.getLogger(__name__)

#: The width of a slot, in seconds: how late a timer may fire.
SLOT = 0.005


class TimerTarget(Protocol):
    """Something with one deadline at a time (a session)."""

    def fire_timers(self) -> None:
        """The deadline came: do what is due and schedule the next one."""


class LoopTimers:
    """The slots of one event loop (use :func:`timers_of`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, dict[TimerTarget, None]] = {}
        self._handles: dict[int, asyncio.TimerHandle] = {}
        self._slot_of: dict[TimerTarget, int] = {}

    def __len__(self) -> int:
        """Targets with a deadline."""
        return len(self._slot_of)

    @property
    def handles(self) -> int:
        """The loop timers in use (one per slot)."""
        return len(self._handles)

    def schedule(self, target: TimerTarget, when: float) -> None:
        """Fire ``target`` at ``when`` (loop time; at most one slot later),
        instead of any deadline it had."""
        slot = math.ceil(when / SLOT)
        old = self._slot_of.get(target)
        if old == slot:
            return
        if old is not None:
            self._leave(target, old)
        self._slot_of[target] = slot
        members = self._slots.get(slot)
        if members is None:
            self._slots[slot] = {target: None}
            self._handles[slot] = self._loop.call_at(slot * SLOT, self._fire, slot)
        else:
            members[target] = None

    def cancel(self, target: TimerTarget) -> None:
        """Forget ``target``'s deadline, if it has one."""
        slot = self._slot_of.pop(target, None)
        if slot is not None:
            self._leave(target, slot)

    def _leave(self, target: TimerTarget, slot: int) -> None:
        members = self._slots.get(slot)
        if members is None:
            return
        members.pop(target, None)
        if not members:
            # The slot's loop timer goes with its last member, so the loop
            # holds no handle (and no reference to the targets) for nothing.
            del self._slots[slot]
            self._handles.pop(slot).cancel()

    def _fire(self, slot: int) -> None:
        self._handles.pop(slot, None)
        members = self._slots.pop(slot, None)
        if members is None:
            return
        for target in members:
            # One fired earlier in this slot may have cancelled or moved it.
            if self._slot_of.get(target) != slot:
                continue
            del self._slot_of[target]
            try:
                target.fire_timers()
            except Exception:  # a bug in one session must not stop the others' timers
                logger.exception("timer of %r failed", target)


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopTimers] = weakref.WeakKeyDictionary()


def timers_of(loop: asyncio.AbstractEventLoop) -> LoopTimers:
    """The slots of ``loop`` (made on first use, gone with the loop)."""
    timers = _BY_LOOP.get(loop)
    if timers is None:
        timers = LoopTimers(loop)
        _BY_LOOP[loop] = timers
    return timers
