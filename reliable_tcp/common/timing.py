"""The shell's own timings, the same on both front ends (seconds).

The protocol's timers (heartbeat, dead_after, resume window, handshake
timeout) are options (``core.config.SessionConfig``); these are how long
the shell gives its own clean-ups, and they are not worth an option.
"""

from __future__ import annotations

__all__ = [
    "ABORT_FLUSH", "DRAIN_CLOSE_RESERVE", "DRAIN_LINGER", "FINAL_FLUSH", "HANDSHAKE_SHARE", "JOURNAL_FINISH", "REJECT_LINGER",
]

#: After the session ended: how long the last frames may take to leave, and
#: the peer to answer our FIN, before the connection is cut; also how long a
#: teardown waits for each thread or task.
FINAL_FLUSH = 2.0
#: abort(): how long the REJECT ABORTED may take to leave.
ABORT_FLUSH = 0.25
#: close(timeout): the share of the budget kept for the close handshake (the
#: rest flushes what is queued, so an outage meanwhile is resumed).
HANDSHAKE_SHARE = 0.25
#: After a REJECT: how long to keep reading, so our FIN (not an RST) ends it.
REJECT_LINGER = 1.0
#: How long a teardown waits for the journal to be closed (an fsync, a close,
#: perhaps a delete).
JOURNAL_FINISH = 5.0
#: drain() of a durable listener: how long it keeps refusing resumes (with
#: the hint) after the last session was moved away, before it closes.
DRAIN_LINGER = 1.0
#: drain() of a listener without a journal: the part of its budget kept for
#: closing the sessions whose owners did not close them in time.
DRAIN_CLOSE_RESERVE = 5.0
