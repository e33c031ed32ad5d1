"""The exceptions reliable_tcp raises, split by who is at fault and how it ended.

::

    ReliableTCPError
    ├── ProtocolError            the peer broke the protocol
    │   ├── FrameError           bytes that are not a valid frame
    │   │   ├── FrameTooLarge    a length field above the limit (nothing allocated)
    │   │   └── UnsupportedVersion
    │   └── AuthenticationFailed the pre-shared-key exchange failed
    ├── UsageError               the caller misused the API (also a ValueError)
    │   └── MessageTooLarge
    ├── WindowFull               the retransmit window has no room (core only;
    │                            the channel blocks instead)
    ├── ChannelClosed            the channel ended cleanly (close handshake)
    └── ChannelBroken            the channel ended because something failed
        └── SessionLost          the session can't be resumed; ``unacked``
                                 holds every message the peer never acknowledged

Timeouts raise the builtin :class:`TimeoutError`.
"""

from __future__ import annotations

__all__ = [
    "ReliableTCPError",
    "ProtocolError",
    "FrameError",
    "FrameTooLarge",
    "UnsupportedVersion",
    "AuthenticationFailed",
    "UsageError",
    "MessageTooLarge",
    "WindowFull",
    "ChannelClosed",
    "ChannelBroken",
    "SessionLost",
]


class ReliableTCPError(Exception):
    """Base class of every error raised by reliable_tcp."""


class ProtocolError(ReliableTCPError):
    """The peer sent something the protocol does not allow."""


class FrameError(ProtocolError):
    """Bytes on the wire that do not decode to a valid frame.

    The only exception the frame decoder raises, whatever its input.
    """


class FrameTooLarge(FrameError):
    """A frame's length field exceeds ``max_frame_size``; nothing was allocated."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame body of {length} bytes exceeds the limit of {limit}")
        self.length = length
        self.limit = limit


class UnsupportedVersion(FrameError):
    """A frame carries a protocol version this implementation does not speak."""

    def __init__(self, version: int) -> None:
        super().__init__(f"unsupported protocol version {version}")
        self.version = version


class AuthenticationFailed(ProtocolError):
    """The peer could not prove it holds the pre-shared key (or did not try)."""


class UsageError(ReliableTCPError, ValueError):
    """The caller used the API in a way it does not allow."""


class MessageTooLarge(UsageError):
    """A message is larger than ``max_message_size``."""


class WindowFull(ReliableTCPError):
    """The retransmit window holds as many unacknowledged messages as allowed."""


class ChannelClosed(ReliableTCPError):
    """The channel was closed cleanly, by this side or by the peer.

    ``unacked`` lists ``(seq, payload)`` of this side's messages that the
    peer had not acknowledged when it closed (empty after a complete close).
    """

    def __init__(self, reason: str = "closed", unacked: tuple[tuple[int, bytes], ...] = ()) -> None:
        super().__init__(reason)
        self.unacked = unacked


class ChannelBroken(ReliableTCPError):
    """The channel ended because of a failure; ``__cause__`` is the root cause."""


class SessionLost(ChannelBroken):
    """The session ended before every message was acknowledged.

    ``unacked`` lists ``(seq, payload)`` for every message this side sent
    that the peer never acknowledged, oldest first, so the application can
    decide what to do with them. Nothing is dropped silently.
    """

    def __init__(self, reason: str, unacked: tuple[tuple[int, bytes], ...] = ()) -> None:
        super().__init__(f"session lost: {reason} ({len(unacked)} unacknowledged messages)")
        self.reason = reason
        self.unacked = unacked
