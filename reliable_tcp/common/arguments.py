"""What both fronts check of a caller's arguments, before anything is queued or waited on.

The public methods call these at their door, so a wrong argument is a
UsageError naming it, the same in the pure and the compiled build: compiled
code would otherwise refuse a wrong type with its own TypeError, or take
``True`` as ``1``, deep inside. This module stays interpreted (setup.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ..exceptions import UsageError

__all__ = ["message", "messages", "timeout", "count"]


def message(data: object, call: str = "send") -> bytes:
    """``data`` as the bytes of one message (bytes, bytearray or memoryview)."""
    if type(data) is bytes:
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise UsageError(f"{call} takes bytes, not {type(data).__name__}")


def messages(items: object) -> list[bytes]:
    """An iterable of messages as a list of bytes (``send_many``)."""
    if isinstance(items, (bytes, bytearray, memoryview, str)) or not isinstance(items, Iterable):
        raise UsageError(f"send_many takes an iterable of bytes messages, not {type(items).__name__}")
    return [item if type(item) is bytes else message(item, "send_many") for item in items]


def timeout(value: object, name: str = "timeout") -> float | None:
    """A timeout in seconds: None (wait as long as it takes) or a number
    that is not NaN (zero or less: do not wait)."""
    if value is None:
        return None
    if type(value) is float or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        seconds = float(value)
        if not math.isnan(seconds):
            return seconds
    raise UsageError(f"{name} is a number of seconds or None, not {value!r}")


def count(value: object, name: str) -> int:
    """A count of at least 1 (``recv_many``'s ``max_messages``)."""
    if type(value) is not int or value < 1:
        raise UsageError(f"{name} is an int of at least 1, not {value!r}")
    return value
