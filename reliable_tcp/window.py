"""The retransmit window (send side) and the receive-side sequence check."""

from __future__ import annotations

from collections import deque

from .exceptions import ProtocolError, WindowFull

__all__ = ["SendWindow", "ReceiveSequence", "SequenceClaimError"]


class SequenceClaimError(ProtocolError):
    """A resume claimed a sequence number that can't be satisfied."""


class SendWindow:
    """Every message sent but not yet acknowledged, oldest first.

    Sequence numbers start at 1. Messages move from *unsent* to *in flight*
    when transmitted, leave the window when a cumulative ack covers them,
    and move back to *unsent* when a resume says the peer lacks them.
    """

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._inflight: deque[bytes] = deque()
        self._unsent: deque[bytes] = deque()
        self.base = 1  # sequence number of the oldest message held
        self.bytes = 0
        self.retransmitted = 0

    @property
    def count(self) -> int:
        """Messages held (in flight plus unsent)."""
        return len(self._inflight) + len(self._unsent)

    @property
    def send_next(self) -> int:
        """Sequence number of the next message to transmit."""
        return self.base + len(self._inflight)

    @property
    def next_seq(self) -> int:
        """Sequence number the next pushed message will get."""
        return self.base + len(self._inflight) + len(self._unsent)

    @property
    def has_unsent(self) -> bool:
        """True when some held message still has to be transmitted."""
        return bool(self._unsent)

    def has_room(self, size: int) -> bool:
        """Whether a message of ``size`` bytes fits now."""
        return self.count < self.max_messages and (self.count == 0 or self.bytes + size <= self.max_bytes)

    def push(self, payload: bytes) -> int:
        """Hold ``payload`` for sending; return its sequence number."""
        if not self.has_room(len(payload)):
            raise WindowFull(f"retransmit window full ({self.count} messages, {self.bytes} bytes)")
        seq = self.next_seq
        self._unsent.append(payload)
        self.bytes += len(payload)
        return seq

    def take_unsent(self, max_bytes: int) -> tuple[int, list[bytes]]:
        """Mark a run of unsent messages as in flight, at least one, until
        their payloads reach ``max_bytes``; return (first seq, payloads)."""
        first = self.send_next
        taken: list[bytes] = []
        total = 0
        unsent, inflight = self._unsent, self._inflight
        while unsent and (not taken or total + len(unsent[0]) <= max_bytes):
            payload = unsent.popleft()
            inflight.append(payload)
            taken.append(payload)
            total += len(payload)
        return first, taken

    def acknowledge(self, ack: int) -> int:
        """Free every message up to ``ack``; return how many were freed.

        An ack for a message never transmitted is a protocol error; an
        ack below what is already freed is stale and changes nothing.
        """
        if ack >= self.send_next:
            raise ProtocolError(f"ack {ack} for a message never sent (next to send is {self.send_next})")
        freed = 0
        inflight = self._inflight
        while self.base <= ack:
            self.bytes -= len(inflight.popleft())
            self.base += 1
            freed += 1
        return freed

    def rewind(self, expect: int) -> int:
        """The peer expects ``expect`` next: free what it has, resend the rest.

        Returns how many messages will be sent again. A claim below what was
        already freed or above anything sent is a protocol error.
        """
        if not self.base <= expect <= self.send_next:
            raise SequenceClaimError(
                f"peer expects message {expect}, but only {self.base}..{self.send_next} can be sent"
            )
        self.acknowledge(expect - 1)
        replay = len(self._inflight)
        self._unsent.extendleft(reversed(self._inflight))
        self._inflight.clear()
        self.retransmitted += replay
        return replay

    def unacked(self) -> tuple[tuple[int, bytes], ...]:
        """Every held message with its sequence number, oldest first."""
        return tuple(enumerate([*self._inflight, *self._unsent], start=self.base))


class ReceiveSequence:
    """Receive side: the next expected sequence number and duplicate detection."""

    def __init__(self) -> None:
        self.expect = 1
        self.duplicates = 0

    def accept(self, first_seq: int, messages: tuple[bytes, ...]) -> tuple[bytes, ...]:
        """Return the part of a run that is new, in order.

        Messages below ``expect`` are duplicates and dropped (counted); a
        run that starts above ``expect`` would leave a gap and is a
        protocol error, never a silent loss.
        """
        if first_seq > self.expect:
            raise ProtocolError(f"message {first_seq} arrived while {self.expect} was expected (a gap)")
        skip = self.expect - first_seq
        if skip:
            self.duplicates += min(skip, len(messages))
            messages = messages[skip:]
        self.expect += len(messages)
        return messages
