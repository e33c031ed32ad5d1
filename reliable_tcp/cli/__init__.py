"""The command-line programs: ``rtcat`` (netcat over a session, tunnels,
the demo, journal housekeeping) and ``rtproxy`` (the fault-injecting proxy).
Nothing in the library imports this package."""

from .commands import (
    EXIT_CONNECT,
    EXIT_INPUT,
    EXIT_INTERRUPT,
    EXIT_LOST,
    EXIT_OK,
    EXIT_STDOUT,
    EXIT_USAGE,
    rtcat,
    rtcat_main,
    rtproxy,
    rtproxy_main,
)

__all__ = [
    "EXIT_CONNECT",
    "EXIT_INPUT",
    "EXIT_INTERRUPT",
    "EXIT_LOST",
    "EXIT_OK",
    "EXIT_STDOUT",
    "EXIT_USAGE",
    "rtcat",
    "rtcat_main",
    "rtproxy",
    "rtproxy_main",
]
