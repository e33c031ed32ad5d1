"""Helpers for tests that run real threads and sockets."""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

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


def _ports_of_this_worker() -> Iterator[int]:
    """Candidate ports for this test process: a block of 1,000 below the
    kernel's ephemeral range, its own by xdist worker number."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    number = int(worker[2:]) if worker[2:].isdigit() else 0
    start = 10_000 + (number % 20) * 1_000
    # Two runs at once (two clones, say) start at different places in the block.
    offset = os.getpid() % 1_000
    return (start + (offset + i) % 1_000 for i in itertools.count())


_PORTS = _ports_of_this_worker()


def free_port() -> int:
    """A loopback port that nothing listens on, for a child process to listen on.

    Not the usual bind-to-0-and-close: that port comes from the ephemeral
    range, and between the probe closing and the child binding, any
    outgoing connection of a test running beside this one (under xdist)
    may take it as its local port, and the child fails with EADDRINUSE.
    Ports below the ephemeral range are never handed out that way, and each
    worker has its own block, so only a foreign program could race us: the
    bind check below still skips every port in use.
    """
    for _ in range(1_000):
        port = next(_PORTS)
        try:
            with socket.create_server(("127.0.0.1", port)):
                return port
        except OSError:
            continue
    raise AssertionError("no free port in this worker's block")


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
