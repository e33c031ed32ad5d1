"""The pure core: the wire format, the session state table, the windows and
the engine that turns bytes and the time into frames and events.

Nothing here opens a socket, starts a thread or reads a clock; the only
import from outside this package is ``reliable_tcp.exceptions``. Both front
ends (``reliable_tcp.sync``, ``reliable_tcp.asyncio``) drive the same engine.
"""
