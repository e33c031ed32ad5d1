"""reliable_tcp: message channels over TCP that survive broken links.

Every message is delivered exactly once and in order across pulled
cables, resets and sleeps, or the sender is told which ones were not.
"""

from .common.backoff import Backoff
from .common.options import ChannelOptions, ListenOptions, ShellOptions
from .common.status import ChannelEvent, ChannelState, ChannelStatistics, ListenerStatistics
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
    RejectedByPeer,
    ReliableTCPError,
    SequenceClaimError,
    SessionLost,
    TLSHandshakeError,
    UnsupportedVersion,
    UsageError,
    WindowFull,
)
from .sync.channel import Channel
from .sync.client import connect
from .sync.server import Listener, listen

__version__ = "0.2.0"

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
    "CorruptFrame",
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
    "SessionLost",
    "ShellOptions",
    "TLSHandshakeError",
    "UnsupportedVersion",
    "UsageError",
    "WindowFull",
    "connect",
    "list_journals",
    "listen",
    "load_psk",
    "remove_journal",
]
