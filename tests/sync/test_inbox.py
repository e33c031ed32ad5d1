"""The receive queue: bounds, the reader's wait for room, the end."""

from __future__ import annotations

import threading

import pytest

from helpers import Worker, wait_for
from reliable_tcp.sync._inbox import Inbox


def test_full_by_count_or_bytes_and_room_wakes_the_reader() -> None:
    inbox = Inbox(max_messages=4, max_bytes=100)
    inbox.put([b"a"] * 4, 4)
    assert inbox.full
    waited = threading.Event()

    def reader() -> None:
        inbox.wait_room(lambda: False)
        waited.set()

    worker = Worker(reader, "room")
    worker.start()
    assert not waited.wait(0.1)
    assert inbox.get(1) == b"a"  # 4 -> 3: room again
    worker.result(5)
    inbox.put([b"x" * 100], 100)
    assert inbox.full  # by bytes now


def test_get_many_takes_at_most_what_was_asked_in_order() -> None:
    inbox = Inbox(100, 1000)
    inbox.put([b"1", b"2", b"3"], 3)
    assert inbox.get_many(2, 1) == [b"1", b"2"]
    assert inbox.get_many(5, 1) == [b"3"]
    assert inbox.taken == 3


def test_after_the_end_queued_messages_come_first_then_fresh_errors() -> None:
    inbox = Inbox(100, 1000)
    inbox.put([b"last"], 4)
    inbox.end(lambda: EOFError("the end"))
    assert inbox.get(1) == b"last"
    errors = []
    for _ in range(2):
        with pytest.raises(EOFError) as info:
            inbox.get(1)
        errors.append(info.value)
    assert errors[0] is not errors[1]


def test_timeout_and_interrupt() -> None:
    inbox = Inbox(1, 1000)
    with pytest.raises(TimeoutError):
        inbox.get(0.05)
    inbox.put([b"a"], 1)
    stop = threading.Event()
    worker = Worker(lambda: inbox.wait_room(stop.is_set), "interrupted")
    worker.start()
    wait_for(worker.is_alive, 5, "the reader to wait")
    stop.set()
    inbox.interrupt()
    worker.result(5)
