"""The listening side's policy both front ends share, sans-I/O.

Every decision the threaded and the asyncio listener make the same way
lives here; each front's ``server.py`` only accepts, reads, writes and
waits. Decisions come back as values: a session to attach the connection
to, or the refusal (a :class:`~reliable_tcp.exceptions.HandshakeRejected`
carrying the REJECT reason) for the front to send.

Rules kept here, one place each:
- what a HELLO that can't be read is answered with (:func:`read_hello`);
- a closing listener refuses every handshake (SERVER_BUSY); a draining one
  every new session, and on a durable listener every resume, with a hint
  of when to come back; a full one says come back in a second; a resume needs
  a session this listener holds (else SESSION_UNKNOWN, or NOT_HERE for
  another node's id); a new session needs room in the registry and, on a
  durable listener, a journal (else SERVER_BUSY);
- a new session is offered to ``accept()`` once its client confirmed it,
  and never after the listener closed;
- after a restart every journaled session comes back: one that was lost
  is offered already ended (its owner learns what was never
  acknowledged), the others wait for their client's resume
  (:meth:`ListenerBook.restore`);
- an ended session leaves the registry; the counters.

Nothing here locks: the threaded listener calls it under its lock, the
asyncio one on its loop.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from ..core.config import SessionConfig
from ..core.engine import SessionEngine
from ..core.frames import MAX_NODE_ID, Hello, RejectReason, retry_after, with_retry_after
from ..core.handshake import ServerHandshake, SessionRegistry
from ..durable.session_journal import Durable
from ..exceptions import FrameError, HandshakeRejected, ProtocolError, ReliableTCPError, UnsupportedVersion, UsageError
from .ending import Unacked
from .status import ChannelState, ListenerStatistics

__all__ = ["BUSY_RETRY_AFTER", "HANDED_OVER", "ListenerBook", "ListenedSession", "drain_pace", "read_hello"]

logger = logging.getLogger(__name__)


#: A resume of the all-zero session id, which no server issues, is a load
#: balancer's health check (docs/protocol.md 4.6): answered at once with
#: SESSION_UNKNOWN and this text, and logged at DEBUG only.
PROBE_SESSION_ID = bytes(16)
PROBE_ANSWER = "no session has the zero id (a health check)"

#: The hint (seconds) with which a listener that has no room refuses: come
#: back in about this long (docs/protocol.md 3, "Retry hint").
BUSY_RETRY_AFTER = 1.0
#: The hint with which a listener that has ``max_pending_handshakes`` under
#: way refuses one more connection (seconds): handshakes take milliseconds.
PENDING_RETRY_AFTER = 0.2
#: What a drained listener's channels raise (ChannelClosed) once it closed.
HANDED_OVER = "the listener drained for a restart: the session waits in its journal for the restarted listener"


def log_refusal(log: logging.Logger, prefix: str, refusal: HandshakeRejected) -> None:
    """The log line of a refused handshake (a health check's at DEBUG: one a second would drown the rest)."""
    level = logging.DEBUG if refusal.text == PROBE_ANSWER else logging.INFO
    log.log(level, "%shandshake refused: %s (%s)", prefix, RejectReason(refusal.reason).name, refusal.text)


def read_hello(reader: ServerHandshake, data: bytes) -> tuple[Hello | None, bytes, HandshakeRejected | None]:
    """Feed the handshake bytes from a new connection: the HELLO once it may
    be acted on, what to answer now (a CHALLENGE), and the refusal if the
    bytes can't open a session (a wrong key, an unknown version, damage)."""
    try:
        hello = reader.receive_data(data)
        return hello, reader.data_to_send(), None
    except HandshakeRejected as rejected:
        return None, b"", rejected
    except UnsupportedVersion as exc:
        return None, b"", HandshakeRejected(RejectReason.UNSUPPORTED_VERSION, str(exc))
    except (FrameError, ProtocolError) as exc:
        return None, b"", HandshakeRejected(RejectReason.PROTOCOL_ERROR, str(exc))


def drain_pace(sessions: int, timeout: float, rate: float | None) -> float:
    """Seconds between two sessions a drain moves away: ``1 / rate``, or
    (by default) all of them spread over half of ``timeout``, so that the
    last has left with time to spare and their resumes, refused with the
    hint, do not all arrive at once."""
    if rate is not None:
        return 1.0 / rate
    return (timeout / 2) / max(1, sessions)


class ListenedSession(Protocol):
    """What the book needs of a front's session."""

    @property
    def session_id(self) -> str: ...

    @property
    def state(self) -> ChannelState: ...

    def end_restored(self, reason: str, unacked: Unacked) -> None: ...


C = TypeVar("C", bound=ListenedSession)


class ListenerBook(Generic[C]):
    """One listener's sessions: the registry, each session's front-end
    session (``C``), the ones waiting for ``accept()``, and the counters."""

    def __init__(self, config: SessionConfig, *, max_sessions: int, node_id: int | None, journal: str | None) -> None:
        if node_id is not None and not 0 < node_id <= MAX_NODE_ID:
            # 0 would silently mean "no node id": behind a balancer that routes
            # by it, every resume of this node's sessions would go astray.
            raise UsageError(f"node_id must be 1..{MAX_NODE_ID}, or None (the default) for a listener without one; "
                             f"got {node_id}")
        if journal is not None:
            config = Durable.durable_config(config)
        self.config = config
        self.journal = journal
        self.registry = SessionRegistry(config, max_sessions=max_sessions, node_id=node_id or 0)
        self.channels: dict[bytes, C] = {}
        #: New sessions for accept(), in the order their clients confirmed them.
        self.offered: deque[C] = deque()
        self.closed = False
        #: While draining (:meth:`drain`): the hint every refusal carries.
        self.draining: float | None = None
        self.rejected_handshakes = 0
        self.sessions_failed = 0

    def restore(self, durables: list[Durable], make_channel: Callable[[SessionEngine, Durable], C]) -> None:
        """Bring back every journaled session after a restart: each waits for
        its client's resume and is offered again by accept(). A session that
        had ended is never resumed: a closed one is deleted, a lost one is
        offered already ended, so its owner learns once what was never
        acknowledged, then its journal is retired."""
        for durable in durables:
            restored = durable.restore_for_listener(self.config)
            if restored is None:
                continue
            engine, ended = restored
            channel = make_channel(engine, durable)
            if ended is not None:
                channel.end_restored(f"{ended[1]} (before the restart)", engine.unacked())
            else:
                self.registry.adopt(engine)
                self.channels[engine.session_id] = channel
            self.offered.append(channel)
            logger.info("restored session %s from %s", engine.session_id.hex(), durable.directory)

    def drain(self, retry_after: float, *, timeout: float, rate: float | None) -> tuple[list[C], float]:
        """The listener drains before a restart: from now on it refuses every
        new session, and on a durable listener every resume too (the session
        waits in its journal for the restarted listener), with SERVER_BUSY
        and the hint to come back in ``retry_after`` seconds. The sessions
        it holds now, to move away (durable) or to wait for, and the seconds
        between two moves (:func:`drain_pace`). UsageError for a timeout,
        hint or rate it can't use (nothing changed then)."""
        if timeout <= 0 or retry_after < 0 or (rate is not None and rate <= 0):
            raise UsageError("drain needs timeout > 0, retry_after >= 0 and rate > 0")
        self.draining = retry_after
        sessions = list(self.channels.values())
        return sessions, drain_pace(len(sessions), timeout, rate)

    def too_many_handshakes(self) -> HandshakeRejected:
        """The refusal of a connection that arrives while ``max_pending_handshakes``
        are under way: come back in a moment (the drain's hint while draining)."""
        hint = self.draining if self.draining is not None else PENDING_RETRY_AFTER
        return self._busy("too many handshakes at once", hint)

    def _busy(self, text: str, hint: float) -> HandshakeRejected:
        return HandshakeRejected(RejectReason.SERVER_BUSY, with_retry_after(hint, text))

    def resume_target(self, hello: Hello) -> C | HandshakeRejected:
        """The channel a resuming HELLO names, or the refusal."""
        if self.closed:
            return HandshakeRejected(RejectReason.SERVER_BUSY, "the server is closing")
        if hello.session_id == PROBE_SESSION_ID:
            return HandshakeRejected(RejectReason.SESSION_UNKNOWN, PROBE_ANSWER)
        if self.draining is not None and self.journal is not None and hello.session_id in self.channels:
            return self._busy("the server is restarting; the session is kept", self.draining)
        channel = self.channels.get(hello.session_id)
        if channel is None:
            return self.registry.unknown_session(hello)
        return channel

    def start(self, hello: Hello, now: float) -> SessionEngine | HandshakeRejected:
        """A new session's engine, registered, or the refusal. On a durable
        listener the front opens its journal next (:meth:`journal_path`)."""
        if self.closed:
            return HandshakeRejected(RejectReason.SERVER_BUSY, "the server is closing")
        if self.draining is not None:
            return self._busy("the server is draining before a restart", self.draining)
        try:
            return self.registry.start(hello, now)
        except HandshakeRejected as rejected:
            if rejected.reason == RejectReason.SERVER_BUSY and retry_after(rejected.reason, rejected.text) is None:
                return self._busy(rejected.text, BUSY_RETRY_AFTER)
            return rejected

    def journal_path(self, engine: SessionEngine) -> str | None:
        """Where a new session's journal goes (None: the listener keeps none)."""
        return None if self.journal is None else os.path.join(self.journal, engine.session_id.hex())

    def journal_failed(self, engine: SessionEngine, error: OSError | ReliableTCPError) -> HandshakeRejected:
        """A new session's journal could not be created: no session without it."""
        logger.error("no journal for a new session: %s", error)
        self.registry.forget(engine.session_id)
        return self._busy("the server can't journal a new session", BUSY_RETRY_AFTER)

    def add(self, engine: SessionEngine, channel: C) -> None:
        """``channel`` carries the new session ``engine``."""
        self.channels[engine.session_id] = channel

    def offer(self, channel: C) -> bool:
        """A new session's client confirmed it: accept() may hand it out
        (not once the listener closed). Whether it was offered."""
        if self.closed:
            return False
        self.offered.append(channel)
        return True

    def ended(self, channel: C) -> None:
        """A session ended: it leaves the registry."""
        self.sessions_failed += channel.state is ChannelState.FAILED
        session_id = bytes.fromhex(channel.session_id) if channel.session_id else b""
        self.registry.forget(session_id)
        if self.channels.get(session_id) is channel:
            del self.channels[session_id]

    def close(self) -> list[C]:
        """The listener closes: no more handshakes or offers; the sessions to end."""
        self.closed = True
        return list(self.channels.values())

    def statistics(self, pending_handshakes: int) -> ListenerStatistics:
        """A frozen snapshot of the counters."""
        return ListenerStatistics(
            sessions=len(self.registry),
            pending_handshakes=pending_handshakes,
            rejected_handshakes=self.rejected_handshakes,
            sessions_failed=self.sessions_failed,
        )
