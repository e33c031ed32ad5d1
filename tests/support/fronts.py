"""Both front ends behind one shape, so a behavioural test runs against each.

``THREADS`` is the threaded API as it is. ``AsyncioFront`` runs an event
loop in a thread of its own and presents the asyncio API with the
threaded API's blocking calls (each one a coroutine run on that loop, with
``asyncio.wait_for`` for a timeout: the cancellation the asyncio API
promises is safe). Tests take a ``front`` (or ``client_front`` and
``server_front``) fixture and call ``front.connect`` and ``front.listen``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import reliable_tcp as rt
import reliable_tcp.asyncio as rta


class ThreadsFront:
    """The threaded API, unchanged."""

    name = "threads"

    def connect(self, address: tuple[str, int], **options: Any) -> rt.Channel:
        return rt.connect(address, **options)

    def listen(self, address: tuple[str, int], **options: Any) -> rt.Listener:
        return rt.listen(address, **options)

    def close(self) -> None:
        pass


class AsyncioFront:
    """The asyncio API, driven from test threads."""

    name = "asyncio"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-asyncio-loop", daemon=True)
        self._thread.start()

    def run(self, awaitable: Any, timeout: float | None = None) -> Any:
        """Await ``awaitable`` on the loop; with ``timeout``, cancel it then (TimeoutError)."""

        async def run() -> tuple[bool, Any]:
            # The outcome travels as a value: concurrent.futures rebuilds a
            # TimeoutError from its args alone, which would drop __cause__.
            try:
                return True, await (awaitable if timeout is None else asyncio.wait_for(awaitable, timeout))
            except BaseException as exc:  # handed to the calling thread as it is
                return False, exc

        ok, outcome = asyncio.run_coroutine_threadsafe(run(), self.loop).result()
        if not ok:
            raise outcome
        return outcome

    def call(self, function: Any, *args: Any) -> Any:
        """Call a plain function on the loop's thread (the asyncio objects are not thread-safe)."""
        if threading.current_thread() is self._thread:
            return function(*args)  # a callback on the loop: already there
        future: Future[Any] = Future()

        def run() -> None:
            try:
                future.set_result(function(*args))
            except BaseException as exc:  # handed to the calling thread
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result()

    def connect(self, address: tuple[str, int], timeout: float | None = None, **options: Any) -> SyncChannel:
        return SyncChannel(self, self.run(rta.connect(address, timeout=timeout, **options)))

    def listen(self, address: tuple[str, int], **options: Any) -> SyncListener:
        return SyncListener(self, self.run(rta.listen(address, **options)))

    def close(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_default_executor()

        self.run(drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class SyncChannel:
    """An asyncio Channel with the threaded Channel's calls."""

    def __init__(self, front: AsyncioFront, channel: rta.Channel) -> None:
        self._front = front
        self.channel = channel

    def send(self, data: bytes, timeout: float | None = None) -> int:
        return self._front.run(self.channel.send(data), timeout)  # type: ignore[no-any-return]

    def send_many(self, messages: list[bytes], timeout: float | None = None) -> int:
        return self._front.run(self.channel.send_many(messages), timeout)  # type: ignore[no-any-return]

    def recv(self, timeout: float | None = None) -> bytes:
        return self._front.run(self.channel.recv(), timeout)  # type: ignore[no-any-return]

    def recv_many(self, max_messages: int = 1024, timeout: float | None = None) -> list[bytes]:
        return self._front.run(self.channel.recv_many(max_messages), timeout)  # type: ignore[no-any-return]

    def flush(self, timeout: float | None = None) -> None:
        self._front.run(self.channel.flush(), timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        self._front.run(self.channel.close(timeout))

    def abort(self) -> tuple[tuple[int, bytes], ...]:
        return self._front.call(self.channel.abort)  # type: ignore[no-any-return]

    def commit(self) -> None:
        self._front.run(self.channel.commit())

    @property
    def acked_seq(self) -> int:
        return self._front.call(lambda: self.channel.acked_seq)  # type: ignore[no-any-return]

    def wait_acked(self, seq: int, timeout: float | None = None) -> None:
        # The channel's own timeout (not the wrapper's cancellation): that is what is under test.
        self._front.run(self.channel.wait_acked(seq, timeout))

    def statistics(self) -> rt.ChannelStatistics:
        return self._front.call(self.channel.statistics)  # type: ignore[no-any-return]

    @property
    def state(self) -> rt.ChannelState:
        return self._front.call(lambda: self.channel.state)  # type: ignore[no-any-return]

    @property
    def session_id(self) -> str:
        return self.channel.session_id

    @property
    def restored(self) -> bool:
        return self.channel.restored

    @property
    def last_sent_seq(self) -> int:
        return self.channel.last_sent_seq

    @property
    def last_committed_seq(self) -> int:
        return self.channel.last_committed_seq

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                yield self.recv()
            except rt.ChannelClosed:
                return

    def __enter__(self) -> SyncChannel:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._front.run(self.channel.__aexit__(*exc_info))  # the asyncio channel's own exit rule


class SyncListener:
    """An asyncio Listener with the threaded Listener's calls."""

    def __init__(self, front: AsyncioFront, listener: rta.Listener) -> None:
        self._front = front
        self.listener = listener

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.address

    def accept(self, timeout: float | None = None) -> SyncChannel:
        return SyncChannel(self._front, self._front.run(self.listener.accept(), timeout))

    def statistics(self) -> rt.ListenerStatistics:
        return self._front.call(self.listener.statistics)  # type: ignore[no-any-return]

    @property
    def session_count(self) -> int:
        return self._front.call(lambda: self.listener.session_count)  # type: ignore[no-any-return]

    def close(self, timeout: float = 5.0) -> None:
        self._front.run(self.listener.close(timeout))

    def drain(self, timeout: float = 30.0, *, retry_after: float = 5.0, rate: float | None = None) -> None:
        self._front.run(self.listener.drain(timeout, retry_after=retry_after, rate=rate))

    @property
    def draining(self) -> bool:
        return self._front.call(lambda: self.listener.draining)  # type: ignore[no-any-return]

    def __enter__(self) -> SyncListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


THREADS = ThreadsFront()

#: What a test's ``front`` fixture gives.
Front = ThreadsFront | AsyncioFront
