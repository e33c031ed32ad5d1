"""How a channel's session ended, recorded once, and the exception each call raises for it.

Shared by both front ends (threads and asyncio), so the rules are the same:
a session that ends with messages unacknowledged is *lost*, however it
ended, and every call raises a fresh exception chained to one root cause.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..core import events as ev
from ..exceptions import (
    AuthenticationFailed,
    ChannelBroken,
    ChannelClosed,
    ProxyError,
    RejectedByPeer,
    ReliableTCPError,
    SessionLost,
    TLSHandshakeError,
)

__all__ = ["EndKind", "Ending", "Unacked", "first_handshake_error"]

Unacked = tuple[tuple[int, bytes], ...]


class EndKind(enum.StrEnum):
    """How a session ended (string-valued: ``EndKind.LOST == "lost"``)."""

    CLOSED = "closed"  # a complete close: everything acknowledged
    ABORTED = "aborted"  # abort(), by either side
    LOST = "lost"  # ended with messages unacknowledged, or refused, expired, failed
    BROKEN = "broken"  # a local failure with nothing unacknowledged


@dataclass(frozen=True, slots=True)
class Ending:
    """The end of a session: ``kind`` is ``closed``, ``aborted``, ``lost``
    (ended with messages unacknowledged, or refused, expired, failed) or
    ``broken`` (a local failure with nothing unacknowledged)."""

    kind: EndKind
    reason: str
    unacked: Unacked
    cause: BaseException | None

    @classmethod
    def of(cls, kind: EndKind, reason: str, unacked: Unacked, cause: BaseException | None) -> Ending:
        """The end, with the rule applied: closed or broken with messages
        unacknowledged is lost (SessionLost lists them)."""
        if kind is EndKind.CLOSED and unacked:
            kind, reason = EndKind.LOST, f"{reason} before every message was acknowledged"
        elif kind is EndKind.BROKEN and unacked:
            kind = EndKind.LOST  # SessionLost is a ChannelBroken that also lists what was not acknowledged
        return cls(kind, reason, unacked, cause)

    @classmethod
    def of_event(cls, event: ev.Event) -> Ending | None:
        """The end an engine event reports, if it is one."""
        if isinstance(event, ev.SessionClosed):
            if event.aborted:
                return cls.of(EndKind.ABORTED, "aborted", event.unacked, None)
            return cls.of(EndKind.CLOSED, "closed by peer" if event.by_peer else "closed", event.unacked, None)
        if isinstance(event, ev.SessionFailed):
            return cls.of(EndKind.LOST, event.reason, event.unacked, event.error)
        return None

    def with_cause(self, cause: BaseException | None) -> Ending:
        """This end, chained to ``cause`` when it has none of its own and failed."""
        if self.cause is not None or cause is None or not self.failed:
            return self
        return Ending(self.kind, self.reason, self.unacked, cause)

    @property
    def failed(self) -> bool:
        """Lost or broken (not a close or an abort)."""
        return self.kind in (EndKind.LOST, EndKind.BROKEN)

    @property
    def reportable(self) -> bool:
        """Lost with messages the owner must be told about."""
        return self.kind is EndKind.LOST and bool(self.unacked)

    def exception(self) -> ReliableTCPError:
        """A fresh exception for this end, chained to its root cause."""
        error: ReliableTCPError
        if self.kind is EndKind.LOST:
            error = SessionLost(self.reason, self.unacked)
        elif self.kind is EndKind.BROKEN:
            error = ChannelBroken(self.reason)
        else:
            error = ChannelClosed(self.reason, self.unacked)
        error.__cause__ = self.cause
        return error


def first_handshake_error(
    ending: Ending | None, *, restored: bool, address: object, last_cause: BaseException | None
) -> BaseException:
    """Why ``connect()`` returns no channel, as a fresh exception; the same
    rule on both front ends.

    A restored session did exist, so its end is reported as it is (with
    what it held). Otherwise no session ever existed: a refusal, a failed
    key exchange or a failed TLS handshake is raised as its own type, any
    other end as ChannelBroken, and no end at all (every attempt failed
    until the deadline) as TimeoutError chained to the last failure.
    """
    error: BaseException
    cause = ending.cause if ending is not None else None
    if ending is None:
        error = TimeoutError(f"could not open a session with {address} in time")
        error.__cause__ = last_cause
    elif restored:
        error = ending.exception()
    elif isinstance(cause, RejectedByPeer):
        error = RejectedByPeer(cause.reason, cause.text)
    elif isinstance(cause, AuthenticationFailed):
        error = AuthenticationFailed(str(cause))
    elif isinstance(cause, TLSHandshakeError):
        error = TLSHandshakeError(str(cause))
        error.__cause__ = cause.__cause__  # the ssl module's own verdict (a certificate, a version)
    elif isinstance(cause, ProxyError):
        error = ProxyError(cause.proxy, cause.answer, transient=cause.transient)
    else:
        error = ending.exception()
        if not isinstance(error, ChannelBroken):
            error = ChannelBroken(str(error))
            error.__cause__ = cause
    return error
