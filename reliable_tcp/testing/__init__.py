"""Tools for testing programs built on reliable_tcp, public like the rest:
``FaultProxy`` (a TCP proxy that blackholes, resets, closes, delays and
throttles on command), the stream checker (``check_stream``: lost,
duplicated and reordered messages) and the conformance vectors
(``reliable_tcp.testing.conformance``). Nothing in the library imports it."""

from .checker import Tally, check_stream
from .proxy import DirectionFaults, FaultProxy

__all__ = ["DirectionFaults", "FaultProxy", "Tally", "check_stream"]
