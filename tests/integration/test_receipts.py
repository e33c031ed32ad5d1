"""Delivery receipts (issue 28): ``acked_seq`` and ``wait_acked`` on both
front ends, through resets, blackholes and resumes, checked against what
the receiver actually got."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import reliable_tcp as rt
from helpers import UNIT, Worker, fast_options, wait_for
from reliable_tcp.testing import FaultProxy


@pytest.mark.timeout(120)
def test_receipts_arrive_in_order_across_resets_and_blackholes_and_never_run_ahead_of_the_receiver(front: Any) -> None:
    """Every receipt names a message the receiver already has: whenever the
    sender sees ``acked_seq`` = k, the receiver's engine has taken in at
    least k messages (its counter, read after the receipt). Receipts only
    grow, through two resets and a blackhole, and end at the last message."""
    count = 3000
    with front.listen(("127.0.0.1", 0), **fast_options()) as listener, FaultProxy(listener.address) as proxy:
        client = front.connect(proxy.address, **fast_options())
        server = listener.accept(timeout=10)
        received: list[bytes] = []
        reading = Worker(lambda: [received.append(server.recv(timeout=60)) for _ in range(count)], "receiver")
        reading.start()
        seen: list[int] = []
        violations: list[tuple[int, int]] = []
        done = threading.Event()

        def watch() -> None:
            while True:
                stopping = done.is_set()  # one more look after the end: the last receipt is seen
                acked = client.acked_seq
                taken_in = server.statistics().messages_received  # read after the receipt
                if taken_in < acked:
                    violations.append((acked, taken_in))
                if not seen or seen[-1] != acked:
                    seen.append(acked)
                if stopping:
                    return

        watching = Worker(watch, "receipt-watch")
        watching.start()
        try:
            for n in range(count):
                seq = client.send(b"%d" % n, timeout=30)
                assert seq == n + 1
                if n in (500, 1500):
                    resumes = client.statistics().resumes
                    proxy.reset()
                    wait_for(lambda: client.statistics().resumes > resumes, 20, "the resume")  # noqa: B023
                elif n == 2500:
                    proxy.blackhole()
                elif n == 2600:
                    proxy.set_faults("both", blackhole=False)
            client.wait_acked(count, timeout=60)
            assert client.acked_seq == count
            reading.result(60)
            done.set()
            watching.result(30)
            assert received == [b"%d" % n for n in range(count)]
            assert violations == []
            assert seen == sorted(seen) and seen[-1] == count and len(seen) >= 2
            assert client.statistics().resumes >= 2
            client.close(timeout=10)
            server.close(timeout=10)
        finally:
            done.set()
            client.abort()
            server.abort()


def test_a_receipt_given_long_ago_returns_at_once_and_bad_numbers_are_usage_errors(front: Any) -> None:
    with front.listen(("127.0.0.1", 0), **fast_options()) as listener:
        client = front.connect(listener.address, **fast_options())
        server = listener.accept(timeout=10)
        try:
            assert client.acked_seq == 0
            for n in range(1, 6):
                assert client.send(b"m%d" % n) == n
            client.flush(timeout=10)
            started = time.monotonic()
            for n in range(1, 6):
                client.wait_acked(n, timeout=0)  # already acknowledged: no wait, not even a zero timeout
            assert time.monotonic() - started < 1.0
            for bad in (0, 6, -1):
                with pytest.raises(rt.UsageError, match="never sent"):
                    client.wait_acked(bad)
            with pytest.raises(rt.UsageError):
                client.wait_acked(True)  # type: ignore[arg-type]
            client.close(timeout=10)
            server.close(timeout=10)
        finally:
            client.abort()


@pytest.mark.timeout(60)
def test_many_waiters_time_out_while_blackholed_and_all_return_once_the_path_heals(front: Any) -> None:
    with front.listen(("127.0.0.1", 0), **fast_options()) as listener, FaultProxy(listener.address) as proxy:
        client = front.connect(proxy.address, **fast_options(resume_window=60.0))
        server = listener.accept(timeout=10)
        try:
            proxy.blackhole()
            seqs = [client.send(b"w%d" % n) for n in range(20)]
            with pytest.raises(TimeoutError, match="not acknowledged in time"):
                client.wait_acked(seqs[0], timeout=0.2 * UNIT)
            waiters = [Worker(lambda s=s: client.wait_acked(s, timeout=30), f"waiter-{s}") for s in seqs]
            for waiter in waiters:
                waiter.start()
            proxy.set_faults("both", blackhole=False)
            for waiter in waiters:
                waiter.result(30)
            assert client.acked_seq == seqs[-1]
            assert [server.recv(timeout=10) for _ in seqs] == [b"w%d" % n for n in range(20)]
            client.close(timeout=10)
            server.close(timeout=10)
        finally:
            client.abort()


@pytest.mark.timeout(60)
def test_a_message_that_never_reached_the_peer_gets_session_lost_not_a_receipt(front: Any) -> None:
    with front.listen(("127.0.0.1", 0), **fast_options()) as listener, FaultProxy(listener.address) as proxy:
        client = front.connect(proxy.address, **fast_options(resume_window=1.0 * UNIT))
        server = listener.accept(timeout=10)
        try:
            first = client.send(b"delivered")
            client.wait_acked(first, timeout=10)
            proxy.blackhole()
            lost = client.send(b"never delivered")
            with pytest.raises(rt.SessionLost) as info:
                client.wait_acked(lost, timeout=30)
            assert (lost, b"never delivered") in info.value.unacked
            assert client.acked_seq == first
            client.wait_acked(first, timeout=0)  # a receipt once given stays given
        finally:
            client.abort()
            server.abort()
