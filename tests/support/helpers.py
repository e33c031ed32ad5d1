"""Helpers for tests that run real threads and sockets."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

#: One time unit for shell tests; raise RTCP_TIME_SCALE on slow machines.
UNIT = float(os.environ.get("RTCP_TIME_SCALE", "1.0"))


def fast_options(**overrides: object) -> dict[str, object]:
    """Millisecond timers so that faults are detected and healed quickly."""
    options: dict[str, object] = {
        "heartbeat_interval": 0.1 * UNIT,
        "dead_after": 0.4 * UNIT,
        "resume_window": 30.0 * UNIT,
        "handshake_timeout": 1.0 * UNIT,
        "ack_delay": 0.005 * UNIT,
    }
    options.update(overrides)
    return options


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout * UNIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Worker(threading.Thread):
    """A thread whose exception is re-raised by ``result()``."""

    def __init__(self, target: Callable[[], object], name: str) -> None:
        super().__init__(name=f"test-{name}", daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None
        self.value: object = None

    def run(self) -> None:
        try:
            self.value = self._target_fn()
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def result(self, timeout: float = 60.0) -> object:
        self.join(timeout * UNIT)
        if self.is_alive():
            raise AssertionError(f"{self.name} did not finish")
        if self.error is not None:
            raise self.error
        return self.value
