"""The asyncio side of tools/bench.py: each function is one process's part.

The same shapes as bench.py's threaded parts (a receiver that puts its port
on ``port_queue``, a sender, an echo server, a ping client), for
``reliable_tcp.asyncio`` and for raw asyncio streams with a 4-byte length
prefix (the baseline an asyncio programmer would write by hand), plus the
many-sessions pair and the dead-link detection time on a loaded loop.
"""

from __future__ import annotations

import asyncio
import os
import resource
import struct
import threading
import time
from typing import Any

_LEN = struct.Struct(">I")


def _usage() -> dict[str, float]:
    """This process's CPU seconds so far and its peak RSS in MB.

    The peak is the kernel's VmHWM, not ``ru_maxrss``: Linux carries
    ``ru_maxrss`` across ``execve``, so a side spawned by the benchmark
    would report at least the benchmark's own peak (a floor of 30-37 MB
    under every side until this was noticed)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu": usage.ru_utime + usage.ru_stime, "rss_mb": _status_mb("VmHWM:") or usage.ru_maxrss / 1024}


def _status_mb(field: str) -> float:
    """A size from /proc/self/status in MB (0.0 where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _rss_now_mb() -> float:
    return _status_mb("VmRSS:")


def _more_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ----------------------------------------------------- reliable_tcp.asyncio


def aio_receiver(port_queue: Any, result_queue: Any, count: int, size: int) -> None:
    """One ``await recv()`` per message."""
    import reliable_tcp
    import reliable_tcp.asyncio as rta

    async def main() -> dict[str, Any]:
        async with rta.listen(("127.0.0.1", 0)) as listener:
            port_queue.put(listener.address[1])
            channel = await listener.accept()
            recv = channel.recv
            await recv()
            start = time.perf_counter()
            for _ in range(count - 1):
                await recv()
            elapsed = time.perf_counter() - start
            try:
                async for _ in channel:
                    pass
            except reliable_tcp.ReliableTCPError:
                pass
            await channel.close()
        return {"side": "receiver", "elapsed": elapsed, "messages": count - 1}

    result = asyncio.run(main())
    result_queue.put({**result, **_usage()})


def aio_sender(port: int, result_queue: Any, count: int, size: int) -> None:
    """One ``await send()`` per message."""
    import reliable_tcp.asyncio as rta

    async def main() -> None:
        channel = await rta.connect(("127.0.0.1", port))
        payload = os.urandom(size)
        send = channel.send
        for _ in range(count):
            await send(payload)
        await channel.close(timeout=60)

    asyncio.run(main())
    result_queue.put({"side": "sender", **_usage()})


def aio_echo_server(port_queue: Any, result_queue: Any, count: int, size: int) -> None:
    import reliable_tcp
    import reliable_tcp.asyncio as rta

    async def main() -> None:
        async with rta.listen(("127.0.0.1", 0)) as listener:
            port_queue.put(listener.address[1])
            channel = await listener.accept()
            for _ in range(count):
                await channel.send(await channel.recv())
            try:
                async for _ in channel:
                    pass
            except reliable_tcp.ReliableTCPError:
                pass
            await channel.close()

    asyncio.run(main())
    result_queue.put({"side": "receiver", **_usage()})


def aio_ping_client(port: int, result_queue: Any, count: int, size: int) -> None:
    import reliable_tcp.asyncio as rta

    async def main() -> list[float]:
        channel = await rta.connect(("127.0.0.1", port))
        payload = os.urandom(size)
        times = []
        for _ in range(count):
            start = time.perf_counter()
            await channel.send(payload)
            await channel.recv()
            times.append(time.perf_counter() - start)
        await channel.close(timeout=30)
        return times

    times = asyncio.run(main())
    result_queue.put({"side": "sender", "rtts": times, **_usage()})


# ------------------------------------------------------- raw asyncio streams


async def _read_message(reader: asyncio.StreamReader) -> bytes:
    (length,) = _LEN.unpack(await reader.readexactly(4))
    return await reader.readexactly(length)


def streams_receiver(port_queue: Any, result_queue: Any, count: int, size: int) -> None:
    """Raw asyncio streams: length prefix, one readexactly pair per message."""

    async def main() -> dict[str, Any]:
        arrived: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _read_message(reader)
            start = time.perf_counter()
            for _ in range(count - 1):
                await _read_message(reader)
            elapsed = time.perf_counter() - start
            writer.write(b"k")
            await writer.drain()
            writer.close()
            arrived.set_result({"side": "receiver", "elapsed": elapsed, "messages": count - 1})

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_queue.put(server.sockets[0].getsockname()[1])
        result = await arrived
        server.close()
        return result

    result = asyncio.run(main())
    result_queue.put({**result, **_usage()})


def streams_sender(port: int, result_queue: Any, count: int, size: int) -> None:
    """One write (and drain) per message, as an asyncio program writes."""

    async def main() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        framed = _LEN.pack(size) + os.urandom(size)
        for _ in range(count):
            writer.write(framed)
            await writer.drain()
        await reader.readexactly(1)
        writer.close()

    asyncio.run(main())
    result_queue.put({"side": "sender", **_usage()})


def streams_echo_server(port_queue: Any, result_queue: Any, count: int, size: int) -> None:
    async def main() -> None:
        done = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for _ in range(count):
                message = await _read_message(reader)
                writer.write(_LEN.pack(len(message)) + message)
                await writer.drain()
            writer.close()
            done.set()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_queue.put(server.sockets[0].getsockname()[1])
        await done.wait()
        server.close()

    asyncio.run(main())
    result_queue.put({"side": "receiver", **_usage()})


def streams_ping_client(port: int, result_queue: Any, count: int, size: int) -> None:
    async def main() -> list[float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        framed = _LEN.pack(size) + os.urandom(size)
        times = []
        for _ in range(count):
            start = time.perf_counter()
            writer.write(framed)
            await writer.drain()
            await _read_message(reader)
            times.append(time.perf_counter() - start)
        writer.close()
        return times

    times = asyncio.run(main())
    result_queue.put({"side": "sender", "rtts": times, **_usage()})


# ------------------------------------------------------------- many sessions


def aio_many_server(port_queue: Any, result_queue: Any, sessions: int, seconds: float) -> None:
    """``sessions`` sessions in one event loop: idle, then all receiving at once."""
    import reliable_tcp
    import reliable_tcp.asyncio as rta

    _more_files()

    async def main() -> dict[str, Any]:
        async with rta.listen(("127.0.0.1", 0), max_sessions=sessions + 10, backlog=4096) as listener:
            port_queue.put(listener.address[1])
            channels = [await listener.accept() for _ in range(sessions)]
            port_queue.put("ready")
            await asyncio.sleep(2.0)  # let the accept burst settle before measuring
            threads = threading.active_count()
            rss = _rss_now_mb()
            before = _usage()["cpu"]
            await asyncio.sleep(seconds)  # idle on purpose: what do heartbeats cost?
            idle_cpu = (_usage()["cpu"] - before) / seconds
            got = [0] * sessions

            async def drain(index: int, channel: rta.Channel) -> None:
                try:
                    while True:
                        got[index] += len(await channel.recv_many(4096))
                except reliable_tcp.ReliableTCPError:
                    return

            # Disconnects counted from here: the figure is for sessions under load.
            already = sum(channel.statistics().disconnects for channel in channels)
            port_queue.put("go")
            start = time.perf_counter()
            await asyncio.gather(*(drain(i, c) for i, c in enumerate(channels)))
            elapsed = time.perf_counter() - start
            disconnects = sum(channel.statistics().disconnects for channel in channels) - already
            for channel in channels:
                await channel.close()
        return {"side": "receiver", "threads": threads, "idle_cpu_s_per_s": idle_cpu, "idle_rss_mb": rss,
                "messages": sum(got), "elapsed": elapsed, "disconnects": disconnects}

    result = asyncio.run(main())
    result_queue.put({**result, **_usage()})


def aio_many_clients(port: int, port_queue: Any, result_queue: Any, sessions: int, per_session: int) -> None:
    import reliable_tcp.asyncio as rta

    _more_files()

    async def main() -> int:
        channels: list[rta.Channel] = []
        for start in range(0, sessions, 50):  # in waves within the listener's 64 pending handshakes
            wave = min(50, sessions - start)
            channels += await asyncio.gather(*(rta.connect(("127.0.0.1", port), timeout=120) for _ in range(wave)))
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, port_queue.get, True, 300) == "ready"
        assert await loop.run_in_executor(None, port_queue.get, True, 900) == "go"
        batch = [b"x" * 64] * 256

        async def send(channel: rta.Channel) -> int:
            already = channel.statistics().disconnects
            for _ in range(per_session // 256):
                await channel.send_many(batch)
            disconnects = channel.statistics().disconnects - already
            await channel.close(timeout=300)
            return disconnects

        return sum(await asyncio.gather(*(send(c) for c in channels)))

    disconnects = asyncio.run(main())
    result_queue.put({"side": "sender", "disconnects": disconnects, **_usage()})


# ------------------------------------------------- detection on a busy loop


def _proxy_part(target: tuple[str, int], commands: Any, replies: Any) -> None:
    """A FaultProxy in a process of its own, so that the loaded loop under
    test does not also slow the proxy down (they would share one GIL)."""
    from reliable_tcp.testing import FaultProxy

    with FaultProxy(target) as proxy:
        replies.put(proxy.address)
        while True:
            command = commands.get()
            if command == "stop":
                return
            getattr(proxy, command)()
            replies.put(command)


def detection_under_load(busy_sessions: int, rounds: int) -> dict[str, Any]:
    """How long a blackholed session takes to be declared dead while the
    same loop streams as fast as it can on ``busy_sessions`` other sessions
    (heartbeat 0.5 s, dead_after 1.5 s). The figure is from the blackhole to
    the verdict, so it includes up to one heartbeat of silence already
    counted: dead_after minus that is the best possible."""
    import multiprocessing

    import reliable_tcp
    import reliable_tcp.asyncio as rta

    options = {"heartbeat_interval": 0.5, "dead_after": 1.5}
    context = multiprocessing.get_context("spawn")
    commands, replies = context.Queue(), context.Queue()

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        async with rta.listen(("127.0.0.1", 0), max_sessions=busy_sessions + 10, **options) as listener:
            proxy = context.Process(target=_proxy_part, args=(listener.address, commands, replies), daemon=True)
            proxy.start()
            proxy_address = await loop.run_in_executor(None, replies.get, True, 30)

            async def command(name: str) -> None:
                commands.put(name)
                assert await loop.run_in_executor(None, replies.get, True, 30) == name

            pairs = []
            for _ in range(busy_sessions):
                client = await rta.connect(listener.address, **options)
                pairs.append((client, await listener.accept()))
            stop = asyncio.Event()
            moved = [0]

            async def pump(client: rta.Channel, server: rta.Channel) -> None:
                batch = [b"l" * 64] * 64

                async def reader() -> None:
                    try:
                        while True:
                            moved[0] += len(await server.recv_many())
                    except reliable_tcp.ReliableTCPError:
                        return

                task = asyncio.ensure_future(reader())
                while not stop.is_set():
                    await client.send_many(batch)
                await client.flush()
                task.cancel()

            pumps = [asyncio.ensure_future(pump(c, s)) for c, s in pairs]
            detections = []
            lags = []
            # The verdict's moment, from the channel's own event (call_soon'd
            # by the verdict): the polling below would add its own lag.
            verdicts: list[float] = []

            def on_event(event: reliable_tcp.ChannelEvent) -> None:
                if event.kind == "disconnected":
                    verdicts.append(time.monotonic())

            watched = await rta.connect(tuple(proxy_address), on_event=on_event, **options)
            peer = await listener.accept()
            try:
                for _ in range(rounds):
                    await asyncio.sleep(1.0)  # under load for a while first
                    before = watched.statistics().disconnects
                    began = time.monotonic()
                    commands.put("blackhole")
                    verdicts.clear()
                    while watched.statistics().disconnects == before or not verdicts:
                        tick = time.monotonic()
                        await asyncio.sleep(0.005)  # polling the verdict with the loop busy
                        lags.append(time.monotonic() - tick - 0.005)
                    detections.append(verdicts[0] - began)
                    assert await loop.run_in_executor(None, replies.get, True, 30) == "blackhole"
                    await command("heal")
                    while watched.state is not reliable_tcp.ChannelState.CONNECTED:
                        await asyncio.sleep(0.01)
            finally:
                stop.set()
                await asyncio.gather(*pumps, return_exceptions=True)
                watched.abort()
                peer.abort()
                commands.put("stop")
                proxy.join(10)
            for client, server in pairs:
                client.abort()
                server.abort()
        return {"busy_sessions": busy_sessions, "dead_after_s": 1.5, "heartbeat_s": 0.5, "detections_s": detections,
                "busy_msgs": moved[0], "loop_lag_p99_s": sorted(lags)[int(len(lags) * 0.99)] if lags else None,
                "loop_lag_max_s": max(lags, default=0.0)}

    return asyncio.run(main())
