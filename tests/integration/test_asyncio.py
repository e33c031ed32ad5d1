"""What only the asyncio front end has: cancellation at every await,
``asyncio.timeout()``, ``serve()``, ``async for`` and ``async with``.

Each test is one ``asyncio.run`` bounded by ``asyncio.timeout``; the
behaviour both fronts share is tested in test_channel.py with ``front``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import reliable_tcp as rt
import reliable_tcp.asyncio as rta
from helpers import UNIT, fast_options, free_port

LOCAL = ("127.0.0.1", 0)


def run(test: Callable[[], Awaitable[None]], limit: float = 30.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(limit * UNIT):
            await test()

    asyncio.run(bounded())


async def until(predicate: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Poll ``predicate`` on the loop until it holds (a condition with a deadline)."""
    async with asyncio.timeout(limit * UNIT):
        while not predicate():
            await asyncio.sleep(0.005)
    assert predicate(), what


async def pair(**options: Any) -> tuple[rta.Listener, rta.Channel, rta.Channel]:
    listener = await rta.listen(LOCAL, **fast_options(**options))
    client = await rta.connect(listener.address, **fast_options(**options))
    server = await listener.accept()
    return listener, client, server


async def fill_window(client: rta.Channel) -> int:
    """Send until the window and the receiver's queue are full; return how many were queued."""
    sent = 0
    while True:
        try:
            async with asyncio.timeout(0.3 * UNIT):
                await client.send(b"%d" % sent)
        except TimeoutError as exc:
            assert exc.__cause__ is not None and exc.__cause__.queued == 0  # type: ignore[attr-defined]
            return sent
        sent += 1


def test_cancelled_send_queued_nothing_and_the_channel_goes_on() -> None:
    async def test() -> None:
        listener, client, server = await pair(window_messages=8, max_queued_messages=4)
        sent = await fill_window(client)
        before = client.last_sent_seq
        blocked = asyncio.ensure_future(client.send(b"never"))
        await asyncio.sleep(0)  # let it reach its wait
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError) as info:
            await blocked
        assert info.value.queued == 0  # type: ignore[attr-defined]
        assert client.last_sent_seq == before == sent
        received = [await server.recv() for _ in range(sent)]
        assert received == [b"%d" % i for i in range(sent)]
        await client.send(b"after")
        assert await server.recv() == b"after"
        await client.close()
        assert server.statistics().messages_received == sent + 1  # "never" never arrived
        await server.close()
        await listener.close()

    run(test)


def test_cancelled_send_many_says_how_many_it_queued() -> None:
    async def test() -> None:
        listener, client, server = await pair(window_messages=8, max_queued_messages=4)
        batch = [b"m%d" % i for i in range(100)]
        task = asyncio.ensure_future(client.send_many(batch))
        await until(lambda: client.statistics().unacked_messages == 8, "a full window")
        task.cancel()
        with pytest.raises(asyncio.CancelledError) as info:
            await task
        queued = info.value.queued  # type: ignore[attr-defined]
        assert 0 < queued < len(batch) and client.last_sent_seq == queued
        received = [await server.recv() for _ in range(queued)]
        assert received == batch[:queued]
        await client.close()
        with pytest.raises(rt.ChannelClosed):
            await server.recv()  # nothing beyond the prefix was ever sent
        await server.close()
        await listener.close()

    run(test)


def test_cancelled_recv_took_nothing() -> None:
    async def test() -> None:
        listener, client, server = await pair()
        for _ in range(5):
            waiting = asyncio.ensure_future(server.recv())
            await asyncio.sleep(0)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await server.recv()
        await client.send_many([b"one", b"two"])
        assert await server.recv() == b"one"
        assert await server.recv() == b"two"
        await client.close()
        await server.close()
        await listener.close()

    run(test)


def test_cancelled_flush_and_accept_change_nothing() -> None:
    async def test() -> None:
        listener, client, server = await pair(window_messages=8, max_queued_messages=4)
        sent = await fill_window(client)
        flushing = asyncio.ensure_future(client.flush())
        await asyncio.sleep(0.05)
        assert not flushing.done()  # the receiver is not reading: nothing can be acknowledged
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        accepting = asyncio.ensure_future(listener.accept())
        await asyncio.sleep(0)
        accepting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await accepting
        second = await rta.connect(listener.address, **fast_options())
        async with asyncio.timeout(5 * UNIT):
            other = await listener.accept()  # the cancelled accept took nobody
        assert other.session_id == second.session_id
        assert [await server.recv() for _ in range(sent)] == [b"%d" % i for i in range(sent)]
        await client.flush()
        assert client.statistics().unacked_messages == 0
        for channel in (second, other, client, server):
            await channel.close()
        await listener.close()

    run(test)


def test_a_cancelled_durable_send_is_queued_and_says_so(tmp_path: Any) -> None:
    async def test() -> None:
        listener = await rta.listen(LOCAL, **fast_options())
        client = await rta.connect(listener.address, journal=os.fspath(tmp_path / "journal"), **fast_options())
        server = await listener.accept()
        outcomes: list[int] = []
        for i in range(50):
            task = asyncio.ensure_future(client.send(b"d%d" % i))
            for _ in range(i % 3):
                await asyncio.sleep(0)  # cancel at different points: in the wait, in the fsync
            task.cancel()
            try:
                await task
                outcomes.append(1)
            except asyncio.CancelledError as exc:
                # No ``queued`` at all: cancelled before send ever ran.
                outcomes.append(getattr(exc, "queued", 0))
        assert 0 in outcomes and 1 in outcomes  # cancelled before it queued, and while its fsync ran
        expected = [b"d%d" % i for i, queued in enumerate(outcomes) if queued]
        await client.close()
        received = [message async for message in server]
        assert received == expected
        assert client.statistics().messages_sent == len(expected)
        await server.close()
        await listener.close()

    run(test)


def test_serve_runs_a_handler_per_session_and_closes_after_it() -> None:
    async def echo(channel: rta.Channel) -> None:
        async for message in channel:
            await channel.send(message.upper())

    async def test() -> None:
        server = await rta.serve(echo, LOCAL, **fast_options())
        async with server:
            clients = [await rta.connect(server.address, **fast_options()) for _ in range(5)]
            for n, client in enumerate(clients):
                await client.send(b"hello %d" % n)
            for n, client in enumerate(clients):
                assert await client.recv() == b"HELLO %d" % n
            for client in clients:
                await client.close()
            await until(lambda: server.listener.session_count == 0, "every session ended")
        assert server.listener.statistics().sessions_failed == 0

    run(test)


def test_a_failing_handler_aborts_only_its_own_session(caplog: pytest.LogCaptureFixture) -> None:
    async def picky(channel: rta.Channel) -> None:
        message = await channel.recv()
        if message == b"bad":
            raise ValueError("handler bug")
        await channel.send(b"ok")
        await channel.recv()

    async def test() -> None:
        async with await rta.serve(picky, LOCAL, **fast_options()) as server:
            good = await rta.connect(server.address, **fast_options())
            bad = await rta.connect(server.address, **fast_options())
            await bad.send(b"bad")
            with pytest.raises(rt.ReliableTCPError):
                await bad.recv()
            await good.send(b"fine")
            assert await good.recv() == b"ok"
            bad.abort()
            await good.close()
        assert "handler bug" in caplog.text

    run(test)


def test_async_with_and_async_for() -> None:
    async def test() -> None:
        async with rta.listen(LOCAL, **fast_options()) as listener:
            async with rta.connect(listener.address, **fast_options()) as client:
                server = await listener.accept()
                await client.send_many([b"a", b"b", b"c"])
            assert client.state is rt.ChannelState.CLOSED  # the block closed it, after delivery
            assert [m async for m in server] == [b"a", b"b", b"c"]
            await server.close()

    run(test)


def test_a_cancelled_close_still_closes() -> None:
    async def test() -> None:
        listener, client, server = await pair()
        await client.send_many([b"x%d" % i for i in range(100)])
        closing = asyncio.ensure_future(client.close())
        await asyncio.sleep(0)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert [m async for m in server] == [b"x%d" % i for i in range(100)]  # delivered, then the clean close
        await until(lambda: client.state is rt.ChannelState.CLOSED, "the close to finish in the background")
        await client.close()  # idempotent, and returns at once
        await server.close()
        await listener.close()

    run(test)


def test_a_cancelled_connect_leaves_nothing_running_and_no_journal_locked(tmp_path: Any) -> None:
    """`async with asyncio.timeout(...)` around a connect while nothing listens:
    once the connect has raised, nothing of it dials on (a listener started
    later on that port is offered no session nobody owns), and its journal is
    free for the next try in the same process, kept as it was."""
    port = free_port()
    journal = str(tmp_path / "client")

    async def test() -> None:
        for _ in range(2):  # the second try would meet JournalLocked if the first held on
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5 * UNIT):
                    await rta.connect(("127.0.0.1", port), journal=journal, **fast_options())
        assert [info.status for info in rt.list_journals(journal)] == ["empty"]
        async with await rta.listen(("127.0.0.1", port), **fast_options()) as listener:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(2 * UNIT):  # several backoff periods: a live dialler would be here by now
                    await listener.accept()
            assert listener.statistics().sessions == 0

    run(test)


def test_a_connect_that_timed_out_leaves_nothing_running_on_the_threaded_front_too(tmp_path: Any) -> None:
    port = free_port()
    journal = str(tmp_path / "client")
    for _ in range(2):
        with pytest.raises(TimeoutError):
            rt.connect(("127.0.0.1", port), timeout=0.5 * UNIT, journal=journal, **fast_options())
    assert [info.status for info in rt.list_journals(journal)] == ["empty"]
    with rt.listen(("127.0.0.1", port), **fast_options()) as listener, pytest.raises(TimeoutError):
        listener.accept(timeout=2 * UNIT)
