"""A Jepsen-style checker for message streams.

From what a sender attempted and had acknowledged, and what a receiver
delivered, count the anomalies that matter for a reliable channel: lost
(acknowledged but never delivered), duplicated, reordered and unexpected
(delivered but never sent). A run passes only when all four are zero.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Tally", "check_stream"]


@dataclass(frozen=True, slots=True)
class Tally:
    """The verdict on one direction of a stream."""

    attempted: int
    acknowledged: int
    delivered: int
    lost: int
    duplicated: int
    reordered: int
    unexpected: int
    #: Sent but unacknowledged, yet delivered (an ack that never came back).
    recovered: int
    #: Sent, unacknowledged and not delivered: reported back to the sender.
    unacknowledged_undelivered: int

    @property
    def ok(self) -> bool:
        """True when nothing was lost, duplicated, reordered or unexpected."""
        return self.lost == self.duplicated == self.reordered == self.unexpected == 0

    def summary(self) -> str:
        """One line for humans."""
        return (
            f"sent {self.attempted}, acknowledged {self.acknowledged}, delivered {self.delivered}: "
            f"lost {self.lost}, duplicated {self.duplicated}, reordered {self.reordered}, "
            f"unexpected {self.unexpected}"
        )


def check_stream(attempted: Sequence[int], acknowledged: Iterable[int], delivered: Sequence[int]) -> Tally:
    """Judge one direction.

    ``attempted``: message numbers the sender handed to ``send``, in order.
    ``acknowledged``: the numbers the channel confirmed (after ``flush`` or
    close, everything not listed in ``SessionLost.unacked``).
    ``delivered``: the numbers the receiver got, in the order it got them.
    """
    sent = set(attempted)
    acked = set(acknowledged) & sent
    counts = Counter(delivered)
    seen = set(counts)
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    unexpected = sum(1 for value in delivered if value not in sent)
    # Reordered: a delivery of an earlier-sent message after a later one.
    position = {value: index for index, value in enumerate(attempted)}
    reordered = 0
    highest = -1
    for value in delivered:
        index = position.get(value)
        if index is None:
            continue
        if index < highest:
            reordered += 1
        else:
            highest = index
    lost = len(acked - seen)
    unacked = sent - acked
    return Tally(
        attempted=len(attempted),
        acknowledged=len(acked),
        delivered=len(delivered),
        lost=lost,
        duplicated=duplicated,
        reordered=reordered,
        unexpected=unexpected,
        recovered=len(unacked & seen),
        unacknowledged_undelivered=len(unacked - seen),
    )
