"""The exceptions reliable_tcp raises, split by who is at fault and how it ended.

::

    ReliableTCPError
    ├── ProtocolError              the peer broke the protocol
    │   ├── FrameError             bytes that are not a valid frame
    │   │   ├── CorruptFrame       damaged on the way (bad magic or checksum)
    │   │   ├── FrameTooLarge      a length field above the limit (nothing allocated)
    │   │   └── UnsupportedVersion
    │   ├── SequenceClaimError     a resume claimed a sequence number that can't be met
    │   └── AuthenticationFailed   the pre-shared-key exchange failed
    ├── RejectedByPeer             the peer sent REJECT; ``reason`` and ``text`` say why
    ├── HandshakeRejected          (internal) this server refuses a HELLO
    ├── UsageError                 the caller passed something wrong (also a ValueError)
    │   └── MessageTooLarge
    ├── InvalidState               the caller asked for something the state does not
    │                              allow (also a RuntimeError); nothing was changed
    ├── WindowFull                 the retransmit window has no room (core only;
    │                              the channel blocks instead)
    ├── JournalError               a durable session's journal can't do its job
    │   ├── JournalLocked          another live process holds it
    │   ├── JournalDamaged         a record is damaged and intact records follow it;
    │   │                          the file is kept as it is (``path``, ``offset``)
    │   └── JournalWriteFailed     a record could not be written (disk full, I/O
    │                              error); ``__cause__`` is the OSError
    ├── ChannelClosed              the channel ended cleanly (close handshake)
    │   └── SessionHandedOver      a draining listener left the session in its
    │                              journal for the restarted listener
    └── ChannelBroken              the channel ended because something failed
        ├── SessionLost            the session can't be resumed; ``unacked``
        │                          holds every message the peer never acknowledged
        ├── TLSHandshakeError      the TLS handshake failed (also a ConnectionError)
        └── ProxyError             the proxy refused the tunnel or is not one (also a
                                   ConnectionError); ``proxy``, ``answer``, ``transient``

Timeouts raise the builtin :class:`TimeoutError`.
"""

from __future__ import annotations

__all__ = [
    "ReliableTCPError",
    "ProtocolError",
    "FrameError",
    "CorruptFrame",
    "FrameTooLarge",
    "UnsupportedVersion",
    "SequenceClaimError",
    "AuthenticationFailed",
    "RejectedByPeer",
    "HandshakeRejected",
    "UsageError",
    "MessageTooLarge",
    "InvalidState",
    "WindowFull",
    "JournalError",
    "JournalLocked",
    "JournalDamaged",
    "JournalWriteFailed",
    "ChannelClosed",
    "SessionHandedOver",
    "ChannelBroken",
    "SessionLost",
    "TLSHandshakeError",
    "ProxyError",
]

Unacked = tuple[tuple[int, bytes], ...]


class ReliableTCPError(Exception):
    """Base class of every error raised by reliable_tcp."""


class ProtocolError(ReliableTCPError):
    """The peer sent something the protocol does not allow."""


class FrameError(ProtocolError):
    """Bytes on the wire that do not decode to a valid frame.

    The only exception the frame decoder raises, whatever its input.
    """


class CorruptFrame(FrameError):
    """Bytes damaged on the way (bad magic, checksum mismatch): the
    connection is dropped and the session resumed on a new one."""


class FrameTooLarge(FrameError):
    """A frame's length field exceeds the receiver's limit; nothing was allocated."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame body of {length} bytes exceeds the limit of {limit}")
        self.length = length
        self.limit = limit


class UnsupportedVersion(FrameError):
    """A frame carries a protocol version this implementation does not speak."""

    def __init__(self, version: int) -> None:
        super().__init__(f"unsupported protocol version {version}")
        self.version = version


class SequenceClaimError(ProtocolError):
    """A resume claimed a sequence number that can't be satisfied."""


class AuthenticationFailed(ProtocolError):
    """The peer could not prove it holds the pre-shared key (or did not try)."""


class RejectedByPeer(ReliableTCPError):
    """The peer sent REJECT: it refused the handshake or ended the session.

    ``reason`` is the :class:`~reliable_tcp.core.frames.RejectReason` code (an
    ``int`` enum) and ``text`` the peer's explanation.
    """

    def __init__(self, reason: int, text: str) -> None:
        name = getattr(reason, "name", str(reason))
        super().__init__(f"rejected by the peer: {name}{': ' + text if text else ''}")
        self.reason = reason
        self.text = text


class HandshakeRejected(ReliableTCPError):
    """Internal: the server refuses a HELLO with ``reason`` (a RejectReason);
    the listener answers REJECT and closes that connection only."""

    def __init__(self, reason: int, text: str) -> None:
        super().__init__(f"{getattr(reason, 'name', reason)}: {text}")
        self.reason = reason
        self.text = text


class UsageError(ReliableTCPError, ValueError):
    """The caller used the API in a way it does not allow."""


class MessageTooLarge(UsageError):
    """A message is larger than this side's or the peer's ``max_message_size``."""


class InvalidState(ReliableTCPError, RuntimeError):
    """A call that the current state does not allow (a local mistake: nothing
    is sent to the peer and the session is not harmed)."""


class WindowFull(ReliableTCPError):
    """The retransmit window holds as many unacknowledged messages as allowed."""


class JournalError(ReliableTCPError):
    """A durable session's journal can't do its job."""


class JournalLocked(JournalError):
    """Another live process holds this journal."""


class JournalDamaged(JournalError):
    """A journal holds a damaged record with intact records after it.

    A crash in the middle of a write can only leave the *last* record
    incomplete, and that torn tail is cut off silently when the journal
    opens. Damage anywhere else (a flipped bit, an overwritten block) would
    lose every later record if it were cut the same way, so the journal is
    left byte for byte as it is and opening it raises this. ``path`` is the
    log file and ``offset`` the byte where the damaged record starts;
    docs/durability.md ("A damaged journal") says what to do.
    """

    def __init__(self, message: str, path: str, offset: int) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset


class JournalWriteFailed(JournalError):
    """A journal record could not be written whole (disk full, I/O error).

    ``__cause__`` is the OSError. Usually nothing of the failed call took
    effect: a message that could not be journaled was neither queued nor
    sent, and the journal is as it was (``queued`` is False). Only when the
    record was written but the final ``fsync`` failed is the message queued
    anyway (``queued`` is True): it will be delivered, but a crash now could
    lose it.
    """

    queued: bool = False


class ChannelClosed(ReliableTCPError):
    """The channel was closed cleanly, by this side or by the peer.

    ``unacked`` is empty after a clean close; it lists ``(seq, payload)``
    of the messages ``abort()`` discarded.
    """

    def __init__(self, reason: str = "closed", unacked: Unacked = ()) -> None:
        super().__init__(reason)
        self.unacked = unacked


class SessionHandedOver(ChannelClosed):
    """A draining listener (``Listener.drain``) left this session in its
    journal for the restarted listener: this process's channel is done with
    it, though the session did not end. ``recv``, ``send`` and ``commit``
    raise it; ``close`` and ``abort`` do nothing. What this process received
    and could not commit, the restarted listener delivers again."""


class ChannelBroken(ReliableTCPError):
    """The channel ended because of a failure; ``__cause__`` is the root cause."""


class SessionLost(ChannelBroken):
    """The session ended before every message was acknowledged, or can't be resumed.

    ``unacked`` lists ``(seq, payload)`` for every message this side sent
    that the peer never acknowledged, oldest first, so the application can
    decide what to do with them. Nothing is dropped silently.
    """

    def __init__(self, reason: str, unacked: Unacked = ()) -> None:
        super().__init__(f"session lost: {reason} ({len(unacked)} unacknowledged messages)")
        self.reason = reason
        self.unacked = unacked


class TLSHandshakeError(ChannelBroken, ConnectionError):
    """The TLS handshake failed: bad certificate, wrong host name, not TLS, timeout."""


class ProxyError(ChannelBroken, ConnectionError):
    """The proxy refused to open a tunnel to the listener, or did not speak
    its protocol.

    ``proxy`` is the proxy's URL without its password, ``answer`` what it
    said (an HTTP status line such as ``HTTP/1.1 407 Proxy Authentication
    Required``, or a SOCKS5 reply), and ``transient`` whether a later try
    may succeed (the proxy could not reach the listener) or not (credentials,
    a rule of the proxy). Before the first session a refusal that is not
    transient is raised by ``connect()`` at once; after it every refusal is
    retried within the resume window, like any failed reconnect.
    """

    def __init__(self, proxy: str, answer: str, *, transient: bool) -> None:
        super().__init__(f"proxy {proxy} refused: {answer}")
        self.proxy = proxy
        self.answer = answer
        self.transient = transient
