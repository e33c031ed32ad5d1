"""The retransmit window (send side) and the receive-side sequence check."""

from __future__ import annotations

from ..exceptions import ProtocolError, SequenceClaimError, WindowFull

__all__ = ["SendWindow", "ReceiveSequence"]


class SendWindow:
    """Every message sent but not yet acknowledged, oldest first.

    Sequence numbers start at 1. Messages are *unsent* until transmitted,
    then *in flight* until a cumulative ack frees them; a resume that says
    the peer lacks some makes them unsent again.

    One list holds them all, with two cursors (first held, next to
    transmit), so batches move by slicing rather than message by message;
    freed entries are compacted away in bulk.
    """

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._messages: list[bytes] = []
        self._head = 0  # index of the oldest held message
        self._send = 0  # index of the next message to transmit
        self.base = 1  # sequence number of the oldest message held
        self.bytes = 0
        self.retransmitted = 0

    @property
    def count(self) -> int:
        """Messages held (in flight plus unsent)."""
        return len(self._messages) - self._head

    @property
    def send_next(self) -> int:
        """Sequence number of the next message to transmit."""
        return self.base + self._send - self._head

    @property
    def next_seq(self) -> int:
        """Sequence number the next pushed message will get."""
        return self.base + len(self._messages) - self._head

    @property
    def has_unsent(self) -> bool:
        """True when some held message still has to be transmitted."""
        return self._send < len(self._messages)

    def has_room(self, size: int) -> bool:
        """Whether a message of ``size`` bytes fits now.

        An empty window always takes one message (up to the message size
        limit), so a message larger than ``max_bytes`` can't block forever.
        """
        count = len(self._messages) - self._head
        return count < self.max_messages and (count == 0 or self.bytes + size <= self.max_bytes)

    def room_for(self, payloads: list[bytes] | tuple[bytes, ...]) -> int:
        """How many of ``payloads``, from the first, fit now."""
        count = len(self._messages) - self._head
        limit = min(len(payloads), self.max_messages - count)
        if limit <= 0:
            return 0
        budget = self.max_bytes - self.bytes
        if limit == len(payloads) and sum(map(len, payloads)) <= budget:
            return limit  # the common case, without a Python-level loop
        total = 0
        for index in range(limit):
            total += len(payloads[index])
            if total > budget and (index or count):
                return index
        return limit

    def push(self, payload: bytes) -> int:
        """Hold ``payload`` for sending; return its sequence number."""
        messages = self._messages
        count = len(messages) - self._head
        size = len(payload)
        if count >= self.max_messages or (count and self.bytes + size > self.max_bytes):  # has_room, inline
            raise WindowFull(f"retransmit window full ({count} messages, {self.bytes} bytes)")
        messages.append(payload)
        self.bytes += size
        return self.base + count

    def push_many(self, payloads: list[bytes] | tuple[bytes, ...]) -> int:
        """Hold every payload (the caller checked :meth:`room_for`); return the first's sequence number."""
        if self.room_for(payloads) < len(payloads):
            raise WindowFull(f"retransmit window full ({self.count} messages, {self.bytes} bytes)")
        seq = self.next_seq
        self._messages.extend(payloads)
        self.bytes += sum(map(len, payloads))
        return seq

    def take_unsent(self, budget: int, per_message: int = 0) -> tuple[int, list[bytes]]:
        """Mark a run of unsent messages as in flight, at least one, while
        their payloads plus ``per_message`` bytes each stay within
        ``budget``; return (first seq, payloads)."""
        first = self.send_next
        start = self._send
        messages = self._messages
        end = len(messages)
        # Most runs fit whole; only a run over budget is cut message by message.
        run = messages[start:end]
        if len(run) > 1 and sum(map(len, run)) + per_message * len(run) > budget:
            total = 0
            for index, payload in enumerate(run):
                total += len(payload) + per_message
                if total > budget and index:
                    run = run[:index]
                    break
        self._send = start + len(run)
        return first, run

    def acknowledge(self, ack: int) -> int:
        """Free every message up to ``ack``; return how many were freed.

        An ack for a message never transmitted is a protocol error; an
        ack below what is already freed is stale and changes nothing.
        """
        if ack >= self.send_next:
            raise ProtocolError(f"ack {ack} for a message never sent (next to send is {self.send_next})")
        freed = ack - self.base + 1
        if freed <= 0:
            return 0
        head = self._head
        self.bytes -= sum(map(len, self._messages[head : head + freed]))
        self._head = head + freed
        self.base += freed
        if self._head > 4096 and self._head * 2 > len(self._messages):
            del self._messages[: self._head]
            self._send -= self._head
            self._head = 0
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
        replay = self._send - self._head
        self._send = self._head
        self.retransmitted += replay
        return replay

    def restore(self, base: int, messages: list[bytes]) -> None:
        """Hold ``messages`` as in flight from sequence number ``base`` (after a restart)."""
        self._messages = list(messages)
        self._head = 0
        self._send = len(self._messages)
        self.base = base
        self.bytes = sum(map(len, self._messages))

    def largest(self) -> int:
        """Size of the largest held message (0 when empty)."""
        return max(map(len, self._messages[self._head :]), default=0)

    def unacked(self) -> tuple[tuple[int, bytes], ...]:
        """Every held message with its sequence number, oldest first."""
        return tuple(enumerate(self._messages[self._head :], start=self.base))


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
