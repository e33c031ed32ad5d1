"""reliable_tcp: message channels over TCP that survive broken links.

Every message is delivered exactly once and in order across pulled
cables, resets and sleeps, or the sender is told which ones were not.
"""

from .auth import load_psk
from .backoff import Backoff
from .channel import Channel, ChannelEvent, ChannelState, ChannelStatistics, ShellOptions, connect
from .config import SessionConfig
from .exceptions import (
    AuthenticationFailed,
    ChannelBroken,
    ChannelClosed,
    FrameError,
    FrameTooLarge,
    MessageTooLarge,
    ProtocolError,
    ReliableTCPError,
    RejectedByPeer,
    SessionLost,
    UnsupportedVersion,
    UsageError,
    WindowFull,
)
from .listener import Listener, ListenerStatistics, listen

__version__ = "0.1.0"

__all__ = [
    "AuthenticationFailed",
    "Backoff",
    "Channel",
    "ChannelBroken",
    "ChannelClosed",
    "ChannelEvent",
    "ChannelState",
    "ChannelStatistics",
    "FrameError",
    "FrameTooLarge",
    "Listener",
    "ListenerStatistics",
    "MessageTooLarge",
    "ProtocolError",
    "RejectedByPeer",
    "ReliableTCPError",
    "SessionConfig",
    "SessionLost",
    "ShellOptions",
    "UnsupportedVersion",
    "UsageError",
    "WindowFull",
    "connect",
    "listen",
    "load_psk",
]
