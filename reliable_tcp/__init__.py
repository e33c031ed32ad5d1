"""reliable_tcp: message channels over TCP that survive broken links.

Every message is delivered exactly once and in order across pulled
cables, resets and sleeps, or the sender is told which ones were not.

The threaded front end (``Channel``, ``connect``, ``Listener``,
``listen``) and the subpackages ``asyncio``, ``testing`` and ``cli`` load
on first use, so ``import reliable_tcp.asyncio`` starts nothing of the
threaded one.
"""

from __future__ import annotations

import importlib
import importlib.machinery
from typing import TYPE_CHECKING, Any

from .common.backoff import Backoff
from .common.options import ChannelOptions, ListenOptions, ShellOptions
from .common.status import ChannelEvent, ChannelState, ChannelStatistics, EventKind, ListenerStatistics
from .core import frames as _frames
from .core.auth import load_psk
from .core.config import SessionConfig
from .durable.directory import JournalInfo, list_journals, remove_journal
from .exceptions import (
    AuthenticationFailed,
    ChannelBroken,
    ChannelClosed,
    CorruptFrame,
    FrameError,
    FrameTooLarge,
    InvalidState,
    JournalDamaged,
    JournalError,
    JournalLocked,
    JournalWriteFailed,
    MessageTooLarge,
    ProtocolError,
    ProxyError,
    RejectedByPeer,
    ReliableTCPError,
    SequenceClaimError,
    SessionHandedOver,
    SessionLost,
    TLSHandshakeError,
    UnsupportedVersion,
    UsageError,
    WindowFull,
)

if TYPE_CHECKING:
    from . import asyncio as asyncio, cli as cli, testing as testing  # not in __all__: "import *" must not shadow asyncio
    from .sync.channel import Channel
    from .sync.client import connect
    from .sync.server import Listener, listen

__version__ = "0.2.0"

#: True when this installation is the compiled build
#: (``RELIABLE_TCP_COMPILE=1 pip install .``): the core and the shell's
#: per-message modules are C extensions made by mypyc from these same
#: sources. False for the pure-Python reference build. Both behave the same.
COMPILED: bool = (_frames.__file__ or "").endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))

#: Names loaded on first use: each with the module that defines it.
_LAZY = {
    "Channel": ".sync.channel",
    "connect": ".sync.client",
    "Listener": ".sync.server",
    "listen": ".sync.server",
    "asyncio": "",
    "cli": "",
    "testing": "",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = importlib.import_module(f".{name}", __name__) if not module else getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next lookup is an ordinary one
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AuthenticationFailed",
    "Backoff",
    "Channel",
    "ChannelBroken",
    "ChannelClosed",
    "ChannelEvent",
    "ChannelOptions",
    "ChannelState",
    "ChannelStatistics",
    "COMPILED",
    "CorruptFrame",
    "EventKind",
    "FrameError",
    "FrameTooLarge",
    "InvalidState",
    "JournalDamaged",
    "JournalError",
    "JournalInfo",
    "JournalLocked",
    "JournalWriteFailed",
    "ListenOptions",
    "Listener",
    "ListenerStatistics",
    "MessageTooLarge",
    "ProtocolError",
    "RejectedByPeer",
    "ReliableTCPError",
    "SequenceClaimError",
    "SessionConfig",
    "SessionHandedOver",
    "SessionLost",
    "ShellOptions",
    "TLSHandshakeError",
    "ProxyError",
    "UnsupportedVersion",
    "UsageError",
    "WindowFull",
    "connect",
    "list_journals",
    "listen",
    "load_psk",
    "remove_journal",
]
