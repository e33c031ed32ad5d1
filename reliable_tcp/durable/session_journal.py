"""A durable session's journal as one channel uses it, and the engine it restores.

Shared by ``connect(journal=...)`` and ``listen(journal=...)``. What must be
on disk before what (docs/durability.md):

- a message is journaled *before* the engine queues it, so a message the
  disk refused is neither queued nor sent, and one that was sent is durable;
- the session's secret is durable before the frame that makes the peer use
  it leaves (ACCEPT on the server, the confirming ACK on the client);
- what the application committed is durable before the peer is told;
- acknowledgements are lazily durable: losing the last one only means the
  peer's copies are sent again and dropped as duplicates;
- how the session ended is recorded when it ends, so a restart never
  resumes a finished session: a closed one is deleted, a lost one is
  reported once (its unacknowledged messages) and then retired.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

from ..core.config import SessionConfig
from ..core.engine import SessionEngine
from ..exceptions import JournalWriteFailed, SessionLost
from .journal import Journal, Outcome, is_journal_directory, secure_directory

__all__ = ["Durable"]

logger = logging.getLogger(__name__)

#: Journal bytes beyond the window's worth before it is compacted.
_COMPACT_AT = 1 << 20


class Durable:
    """One channel's journal: what it records, and when it waits for the disk."""

    def __init__(self, journal: Journal, config: SessionConfig) -> None:
        self.journal = journal
        self._compact_at = _COMPACT_AT + 4 * config.window_bytes

    @staticmethod
    def durable_config(config: SessionConfig) -> SessionConfig:
        """A durable session acknowledges only what the application committed."""
        return dataclasses.replace(config, ack_on_commit=True)

    @classmethod
    def open(cls, directory: str, config: SessionConfig) -> Durable:
        """Open (or create) the journal in ``directory``; raises JournalLocked."""
        return cls(Journal(directory), config)

    @property
    def directory(self) -> str:
        """Where the journal lives."""
        return self.journal.directory

    @classmethod
    def open_for_client(cls, directory: str, config: SessionConfig) -> tuple[Durable, SessionEngine | None]:
        """The connecting side's journal and the session it holds (both
        fronts). A session that ended before the restart is never resumed:
        a lost one with messages unacknowledged is reported once
        (SessionLost) and its journal retired; any other finished one is
        set aside and a new session begins."""
        durable = cls.open(directory, config)
        engine = durable.restore(config, client=True)
        ended = durable.ended
        if ended is None:
            return durable, engine
        unacked = engine.unacked() if engine is not None else ()
        durable.finish("closed" if ended[0] is Outcome.CLOSED else "aborted", reported=True)
        if ended[0] is Outcome.LOST and unacked:
            raise SessionLost(f"{ended[1]} (before the restart)", unacked)
        return cls.open(directory, config), None

    @classmethod
    def open_all_for_listener(cls, directory: str, config: SessionConfig) -> list[Durable]:
        """Every session journal in a listener's ``directory`` (created, mode
        0700, if missing), opened and locked, for both fronts.

        Only journals this library wrote are touched (``is_journal_directory``);
        anything else there (``lost+found``, an operator's files) is left as
        it is, with a warning. All or none: if one can't be opened
        (JournalLocked, JournalDamaged, an OSError), those already opened are
        released before the error is raised, so a listen() that fails holds
        no journal."""
        secure_directory(directory)
        opened: list[Durable] = []
        try:
            for name in sorted(os.listdir(directory)):
                path = os.path.join(directory, name)
                if is_journal_directory(path):
                    opened.append(cls.open(path, config))
                else:
                    logger.warning("%s is not a session journal; left alone", path)
        except BaseException:
            for durable in opened:
                durable.release()
            raise
        return opened

    def restore_for_listener(self, config: SessionConfig) -> tuple[SessionEngine, tuple[Outcome, str] | None] | None:
        """A listener's session after a restart: its engine and how it had
        ended (None: still live, to resume), or None when there is nothing to
        offer: no session yet, closed, or lost with every message
        acknowledged. Such a journal is retired here."""
        engine = self.restore(config, client=False)
        ended = self.ended
        if engine is None or (ended is not None and (ended[0] is not Outcome.LOST or not engine.unacked_count)):
            self.finish("closed" if ended is None or ended[0] is Outcome.CLOSED else "aborted", reported=True)
            return None
        return engine, ended

    def restore(self, config: SessionConfig, *, client: bool) -> SessionEngine | None:
        """The engine the journal describes, or None if it holds no session yet."""
        state = self.journal.state
        if not state.session_id:
            return None
        return SessionEngine.restore(
            config,
            client=client,
            session_id=state.session_id,
            secret=state.secret,
            previous_secret=state.previous_secret,
            unacked=sorted(state.unacked.items()),
            next_seq=state.next_seq,
            committed=state.consumed,
            now=time.monotonic(),
        )

    # ---------------------------------------------------------------- writes

    def record_sent(self, first_seq: int, payloads: list[bytes] | tuple[bytes, ...]) -> int:
        """Journal messages about to be queued; a position for :meth:`wait_durable`.

        Raises JournalWriteFailed (chained to the OSError) when the disk
        refuses: then nothing of this call is in the journal.
        """
        try:
            return self.journal.record_sent(first_seq, payloads)
        except OSError as exc:
            raise JournalWriteFailed(f"could not journal {len(payloads)} message(s): {exc}") from exc

    def wait_durable(self, position: int | None = None) -> None:
        """Return once everything up to ``position`` is on disk (group commit),
        compacting now and then so the journal stays bounded."""
        try:
            self.journal.sync(position)
        except OSError as exc:
            error = JournalWriteFailed(f"queued, but the journal could not make it durable: {exc}")
            error.queued = True
            raise error from exc
        if self.journal.size() > self._compact_at:
            try:
                self.journal.compact()
            except OSError as exc:  # the old log is intact; try again later
                logger.warning("journal %s: could not compact: %s", self.directory, exc)

    def record_session(self, session_id: bytes, secret: bytes, previous_secret: bytes) -> None:
        """The session's id and secrets, durable before the peer may use them."""
        try:
            position = self.journal.record_session(session_id, secret, previous_secret)
            self.journal.sync(position)
        except OSError as exc:
            raise JournalWriteFailed(f"could not journal the session: {exc}") from exc

    def record_acked(self, upto: int) -> None:
        """The peer acknowledged up to ``upto`` (lazily durable; a failure is
        only logged: the journal keeps copies that will be sent again)."""
        try:
            self.journal.record_acked(upto)
        except (OSError, ValueError) as exc:  # ValueError: the journal was closed meanwhile
            logger.warning("journal %s: could not record an acknowledgement: %s", self.directory, exc)

    def record_consumed(self, upto: int) -> None:
        """The application committed every received message up to ``upto``;
        durable when this returns (raises JournalWriteFailed otherwise)."""
        try:
            self.journal.sync(self.journal.record_consumed(upto))
        except OSError as exc:
            raise JournalWriteFailed(f"could not journal the commit: {exc}") from exc

    @property
    def ended(self) -> tuple[Outcome, str] | None:
        """How the journaled session ended before (an END record), or None."""
        state = self.journal.state
        return None if state.ended is None else (state.ended, state.end_reason)

    def record_end(self, kind: str, reason: str) -> None:
        """The session ended (``kind``: the channel's "closed", "aborted",
        "lost" or "broken"): a restart must not resume it."""
        outcome = {"closed": Outcome.CLOSED, "aborted": Outcome.ABORTED}.get(kind, Outcome.LOST)
        try:
            self.journal.sync(self.journal.record_end(outcome, reason))
        except (OSError, ValueError) as exc:  # ValueError: the journal was closed meanwhile
            logger.warning("journal %s: could not record the end of the session: %s", self.directory, exc)

    def finish(self, kind: str, *, reported: bool) -> None:
        """Close the journal after the session ended as ``kind``. A complete
        close deletes it; an abort, or a loss its owner has been told of
        (``reported``), retires it; a loss nobody was told of stays, to be
        reported by the next process that opens it."""
        try:
            if kind == "closed":
                self.journal.close(discard=True)
            else:
                self.journal.close(retire=kind == "aborted" or reported)
        except OSError as exc:
            logger.warning("journal %s: could not close cleanly: %s", self.directory, exc)

    def release(self) -> None:
        """Close the journal of a session that has not ended (the process
        stops; a restart resumes it)."""
        try:
            self.journal.close()
        except OSError as exc:
            logger.warning("journal %s: could not close cleanly: %s", self.directory, exc)
