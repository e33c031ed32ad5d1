"""reliable_tcp for asyncio programs: the same sessions, engine and wire
protocol as the threaded API, driven by the event loop::

    import reliable_tcp.asyncio as rta

    async with rta.connect((host, port)) as channel:
        await channel.send(b"hello")
        print(await channel.recv())

    async with rta.listen((host, port)) as listener:
        channel = await listener.accept()

    server = await rta.serve(handler, (host, port))   # handler(channel) per new session
    async with server:
        await server.serve_forever()

A threaded client talks to an asyncio server and the other way round. See
docs/guide.md ("asyncio") for the cancellation rules.
"""

from .channel import Channel
from .client import connect
from .server import Listener, Server, listen, serve

__all__ = ["Channel", "Listener", "Server", "connect", "listen", "serve"]
