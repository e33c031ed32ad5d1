"""The threaded shell around one session engine: what ``connect`` and ``accept`` return.

Per connection a reader thread (the only caller of ``recv``), a writer
thread (the only caller of ``sendall``) and a heartbeat thread (sleeps until
the engine's next deadline). The connecting side adds a connector thread
that reconnects with backoff. One lock guards the engine; user code and
socket I/O never run under it. See docs/design.md.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import itertools
import logging
import random
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

from . import events as ev
from ._transport import close_socket, configure_socket, has_pending_input, link_error_reason, probe_pending_error
from .backoff import Backoff, is_retryable
from .config import SessionConfig
from .engine import SessionEngine
from .journal import Journal
from .exceptions import ChannelBroken, ChannelClosed, ReliableTCPError, SessionLost, TLSHandshakeError, UsageError
from .state import TERMINAL_STATES, SessionState
from .tls import TLSLayer

__all__ = [
    "Channel",
    "ChannelState",
    "ChannelStatistics",
    "ChannelEvent",
    "ShellOptions",
    "connect",
    "split_options",
]

logger = logging.getLogger(__name__)

_RECV_BUFFER = 256 * 1024
_JOIN_TIMEOUT = 5.0
_FINAL_FLUSH_TIMEOUT = 2.0
_COMPACT_AT = 1 << 20  # journal bytes beyond the window's worth before compacting


class ChannelState(enum.Enum):
    """What a channel is doing, as the application sees it."""

    CONNECTING = "connecting"  # first handshake not done yet
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # link lost; waiting to resume
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"  # session lost or protocol error


@dataclass(frozen=True, slots=True)
class ChannelEvent:
    """A state change reported to ``on_event``: ``kind`` is one of
    ``connected``, ``disconnected``, ``resumed``, ``closed``, ``failed``.

    ``detail`` says why (the cause of a disconnect, the reason of a failure);
    ``replayed`` counts the messages sent again after a resume.
    """

    kind: str
    state: ChannelState
    detail: str = ""
    replayed: int = 0


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """A snapshot of a channel's counters and timings (seconds)."""

    state: ChannelState
    messages_sent: int
    bytes_sent: int
    messages_received: int
    bytes_received: int
    retransmitted: int
    duplicates_dropped: int
    connections: int
    disconnects: int
    resumes: int
    unacked_messages: int
    unacked_bytes: int
    queued_messages: int
    last_rtt: float | None
    last_detection_time: float | None
    last_recovery_time: float | None


@dataclass(frozen=True, slots=True)
class ShellOptions:
    """Settings of the threaded shell (the session's own are in SessionConfig)."""

    connect_timeout: float = 30.0
    backoff: Backoff = Backoff()
    max_queued_messages: int = 65536
    max_queued_bytes: int = 64 * 1024 * 1024
    on_event: Callable[[ChannelEvent], None] | None = None
    #: With a journal: recv() commits what it returned before (see Channel.commit).
    auto_commit: bool = True
    #: TLS: a client context (``ssl.create_default_context()``) for connect,
    #: a server context with its certificate for listen.
    ssl_context: ssl.SSLContext | None = None
    #: The name the server's certificate must carry (default: the host connected to).
    server_hostname: str | None = None

    def __post_init__(self) -> None:
        if self.connect_timeout <= 0 or self.max_queued_messages < 1 or self.max_queued_bytes < 1:
            raise ValueError("connect_timeout and the receive queue limits must be positive")


_SESSION_FIELDS = {f.name for f in fields(SessionConfig)}
_SHELL_FIELDS = {f.name for f in fields(ShellOptions)}


def split_options(options: dict[str, Any]) -> tuple[SessionConfig, ShellOptions, dict[str, Any]]:
    """Sort keyword options into session settings, shell settings and the rest."""
    session = {k: v for k, v in options.items() if k in _SESSION_FIELDS}
    shell = {k: v for k, v in options.items() if k in _SHELL_FIELDS}
    rest = {k: v for k, v in options.items() if k not in _SESSION_FIELDS and k not in _SHELL_FIELDS}
    return SessionConfig(**session), ShellOptions(**shell), rest


_STATE_OF_ENGINE = {
    SessionState.OPEN: ChannelState.CONNECTED,
    SessionState.CLOSING: ChannelState.CLOSING,
    SessionState.CLOSE_ACKED: ChannelState.CLOSING,
    SessionState.PEER_CLOSED: ChannelState.CLOSING,
    SessionState.CLOSED: ChannelState.CLOSED,
    SessionState.LOST: ChannelState.FAILED,
    SessionState.FAILED: ChannelState.FAILED,
}

_ids = itertools.count(1)


class _Connection:
    """One TCP connection of a channel, with the threads that serve it."""

    def __init__(self, sock: socket.socket, number: int, tls: TLSLayer | None) -> None:
        self.sock = sock
        self.number = number
        self.tls = tls
        self.threads: list[threading.Thread] = []
        self.dropped = False


class Channel:
    """A reliable, ordered, exactly-once message channel that survives broken links.

    Get one from :func:`reliable_tcp.connect` or
    :meth:`reliable_tcp.Listener.accept`. Thread-safe: any thread may call
    :meth:`send`, :meth:`recv`, :meth:`flush` and :meth:`close`.
    """

    def __init__(
        self,
        engine: SessionEngine,
        shell: ShellOptions,
        *,
        address: tuple[str, int] | None = None,
        on_end: Callable[[Channel], None] | None = None,
        on_confirmed: Callable[[Channel], None] | None = None,
        journal: Journal | None = None,
        restored: bool = False,
    ) -> None:
        self._engine = engine
        self._config = engine.config
        self._shell = shell
        self._address = address  # set on the connecting side: where to reconnect
        self._on_end = on_end
        self._on_confirmed = on_confirmed
        self._journal = journal
        self._aborted = False
        #: True for a session brought back from a journal after a restart.
        self.restored = restored
        self._handed_out = engine.committed  # seq of the last message recv() returned
        self._name = f"rtcp-{'client' if engine.client else 'server'}-{next(_ids)}"
        self._lock = threading.Lock()
        self._readable = threading.Condition(self._lock)  # inbox grew or the stream ended
        self._inbox_space = threading.Condition(self._lock)  # the application took messages
        self._sendable = threading.Condition(self._lock)  # acks freed window space
        self._output_ready = threading.Condition(self._lock)  # the engine has bytes to write
        self._timer = threading.Condition(self._lock)  # a deadline moved earlier
        self._changed = threading.Condition(self._lock)  # connection or state changed
        self._inbox: deque[bytes] = deque()
        self._inbox_bytes = 0
        self._connection: _Connection | None = None
        self._connections = itertools.count(1)
        self._threads: list[threading.Thread] = []
        self._after_lock: list[Callable[[], None]] = []
        self._timer_target: float | None = None
        self._ended = False  # the session reached a terminal state
        self._end_error: ReliableTCPError | None = None  # what later calls raise
        self._end_unacked: tuple[tuple[int, bytes], ...] = ()
        self._stopping = False  # close() or end: no more connections
        self._reported_unacked = False
        self._ever_connected = False
        self._disconnected_at: float | None = None
        self._last_cause: BaseException | None = None
        self._last_recovery: float | None = None
        self._disconnects = 0
        self._rng = random.Random()
        if restored:
            self._ever_connected = True

    # -------------------------------------------------------------- queries

    @property
    def state(self) -> ChannelState:
        """The channel's current state."""
        with self._lock:
            return self._state_locked()

    def _state_locked(self) -> ChannelState:
        state = self._engine.state
        if state in _STATE_OF_ENGINE:
            return _STATE_OF_ENGINE[state]
        return ChannelState.DISCONNECTED if self._ever_connected else ChannelState.CONNECTING

    @property
    def session_id(self) -> str:
        """The session id in hex (empty until the first handshake)."""
        return self._engine.session_id.hex() if any(self._engine.session_id) else ""

    def statistics(self) -> ChannelStatistics:
        """A frozen snapshot of the counters."""
        with self._lock:
            engine = self._engine
            c = engine.counters
            return ChannelStatistics(
                state=self._state_locked(),
                messages_sent=c.messages_sent,
                bytes_sent=c.bytes_sent,
                messages_received=c.messages_received,
                bytes_received=c.bytes_received,
                retransmitted=engine.retransmitted,
                duplicates_dropped=engine.duplicates_dropped,
                connections=c.handshakes,
                disconnects=self._disconnects,
                resumes=c.resumes,
                unacked_messages=engine.unacked_count,
                unacked_bytes=engine.unacked_bytes,
                queued_messages=len(self._inbox),
                last_rtt=c.last_rtt,
                last_detection_time=c.last_detection_time,
                last_recovery_time=self._last_recovery,
            )

    # -------------------------------------------------------- locking help

    def _run_after_lock(self) -> None:
        """Run what was deferred until the lock was released: user
        callbacks and socket closes."""
        while True:
            with self._lock:
                if not self._after_lock:
                    return
                actions, self._after_lock = self._after_lock, []
            for action in actions:
                try:
                    action()
                except Exception:  # a user callback must not kill our thread
                    logger.exception("%s: event callback failed", self._name)

    def _notify(self, kind: str, detail: str = "", replayed: int = 0) -> None:
        callback = self._shell.on_event
        if callback is not None:
            event = ChannelEvent(kind, self._state_locked(), detail, replayed)
            self._after_lock.append(lambda: callback(event))

    def _absorb(self, now: float) -> None:
        """Act on the engine's events and output. Lock held."""
        engine = self._engine
        for event in engine.events_received():
            if isinstance(event, ev.MessagesReceived):
                self._inbox.extend(event.messages)
                self._inbox_bytes += event.nbytes
                self._readable.notify_all()
            elif isinstance(event, ev.MessagesAcknowledged):
                self._sendable.notify_all()
                if self._journal is not None:
                    self._journal.record_acked(event.ack)  # lazily durable: an old ack only resends
            elif isinstance(event, ev.HandshakeCompleted):
                self._on_handshake(event, now)
            elif isinstance(event, ev.PeerConfirmed) and self._on_confirmed is not None:
                self._after_lock.append(functools.partial(self._on_confirmed, self))
            elif isinstance(event, ev.TransportFailed):
                self._drop_connection(event.reason, event.error, abort=True)
            elif isinstance(event, ev.PeerClosed):
                self._readable.notify_all()
            elif isinstance(event, ev.SessionClosed):
                self._end(None, event.unacked, "closed by peer" if event.by_peer else "closed")
            elif isinstance(event, ev.SessionLost):
                error = SessionLost(event.reason, event.unacked)
                cause = event.error or self._last_cause
                if cause is not None:
                    error.__cause__ = cause
                self._end(error, event.unacked, event.reason)
        if engine.has_output():
            self._output_ready.notify()
        deadline = engine.next_deadline()
        if deadline is not None and (self._timer_target is None or deadline < self._timer_target):
            self._timer.notify()

    def _on_handshake(self, event: ev.HandshakeCompleted, now: float) -> None:
        if self._journal is not None:
            # Durable before the confirming ACK leaves: the writer can't take
            # it until this lock is released. A rare fsync under the lock.
            engine = self._engine
            self._journal.sync(self._journal.record_session(engine.session_id, engine.secret, engine.previous_secret))
        first_connection = not self._ever_connected
        self._ever_connected = True
        self._changed.notify_all()
        self._sendable.notify_all()
        if event.resumed:
            if self._disconnected_at is not None:
                self._last_recovery = now - self._disconnected_at
            logger.info("%s: session resumed, %d messages replayed", self._name, event.replayed)
            self._notify("resumed", replayed=event.replayed)
        elif first_connection:
            self._notify("connected", self.session_id)
        self._disconnected_at = None

    def _end(self, error: ReliableTCPError | None, unacked: tuple[tuple[int, bytes], ...], detail: str) -> None:
        """The session reached a terminal state. Lock held."""
        if self._ended:
            return
        self._ended = True
        self._stopping = True
        self._end_unacked = unacked
        if error is None:
            self._end_error = ChannelClosed(detail, unacked)
            self._notify("closed", detail)
        else:
            self._end_error = error
            logger.warning("%s: %s", self._name, error)
            self._notify("failed", str(error))
        for condition in (self._readable, self._sendable, self._output_ready, self._timer, self._changed, self._inbox_space):
            condition.notify_all()
        if self._on_end is not None:
            on_end = self._on_end
            self._after_lock.append(lambda: on_end(self))

    # ----------------------------------------------------------- connections

    def _install_connection(self, sock: socket.socket, tls: TLSLayer | None = None) -> None:
        """Make ``sock`` the current connection and start its threads. Lock
        held; the engine has just been told (connection_made or attach)."""
        if self._connection is not None:
            # The engine already moved to the new connection; only the old socket goes.
            self._discard_connection(abort=True)
        conn = _Connection(sock, next(self._connections), tls)
        self._connection = conn
        base = f"{self._name}-c{conn.number}"
        for role, target in (("reader", self._reader), ("writer", self._writer), ("heartbeat", self._heartbeat)):
            thread = threading.Thread(target=self._guard, args=(target, conn), name=f"{base}-{role}", daemon=True)
            conn.threads.append(thread)
            self._threads.append(thread)
        for thread in conn.threads:
            thread.start()
        self._absorb(time.monotonic())

    def _drop_connection(self, reason: str, cause: BaseException | None, *, abort: bool, notify: bool = True) -> None:
        """Forget the current connection and close its socket after the lock
        is released (which wakes its threads). Lock held."""
        if self._connection is None:
            return
        self._discard_connection(abort=abort)
        now = time.monotonic()
        if cause is not None:
            self._last_cause = cause
        if self._engine.state not in TERMINAL_STATES:
            self._engine.transport_lost(now, reason)
            self._disconnects += 1
            if self._disconnected_at is None:
                self._disconnected_at = now
            if notify and not self._stopping:
                logger.info("%s: disconnected: %s", self._name, reason)
                self._notify("disconnected", reason)
        self._absorb(now)

    def _discard_connection(self, *, abort: bool) -> None:
        """Detach the current connection's threads and close its socket once
        the lock is released (which wakes them). Lock held."""
        conn = self._connection
        if conn is None:
            return
        self._connection = None
        conn.dropped = True
        self._after_lock.append(lambda: close_socket(conn.sock, abort=abort))
        for condition in (self._output_ready, self._timer, self._changed, self._inbox_space, self._sendable):
            condition.notify_all()

    def _connection_failed(self, conn: _Connection, exc: BaseException | None, reason: str) -> None:
        """A socket call of ``conn`` failed or saw EOF (called without the lock)."""
        with self._lock:
            if conn is self._connection:
                if exc is not None and isinstance(exc, OSError) and reason == "":
                    reason = link_error_reason(exc) or str(exc)
                self._drop_connection(reason or "connection lost", exc, abort=exc is not None)
        self._run_after_lock()

    def _guard(self, target: Callable[..., None], *args: Any) -> None:
        """Run a background thread; its first unexpected failure ends the
        channel, and every later call raises ChannelBroken chained to it."""
        try:
            target(*args)
        except Exception as exc:
            logger.exception("%s: %s failed", self._name, threading.current_thread().name)
            with self._lock:
                error = ChannelBroken(f"internal failure in {threading.current_thread().name}: {exc!r}")
                error.__cause__ = exc
                self._end(error, self._engine.unacked(), str(exc))
                self._discard_connection(abort=True)
            self._run_after_lock()

    def _reader(self, conn: _Connection) -> None:
        buffer = bytearray(_RECV_BUFFER)
        view = memoryview(buffer)
        sock = conn.sock
        shell = self._shell
        try:
            while True:
                with self._lock:
                    # Backpressure: stop reading while the application is behind,
                    # so TCP flow control slows the sender instead of our memory growing.
                    while (
                        len(self._inbox) >= shell.max_queued_messages or self._inbox_bytes >= shell.max_queued_bytes
                    ) and not conn.dropped:
                        self._inbox_space.wait()
                    if conn.dropped:
                        return
                try:
                    count = sock.recv_into(buffer)
                except OSError as exc:
                    self._connection_failed(conn, exc, "")
                    return
                now = time.monotonic()
                with self._lock:
                    if conn.dropped:
                        return
                    data: bytes | memoryview = view[:count]
                    if count and conn.tls is not None:
                        try:
                            data = conn.tls.decrypt(data)
                        except ssl.SSLError as exc:  # a TLS alert or a corrupt record
                            self._drop_connection(f"TLS error: {exc}", exc, abort=True)
                            count = -1
                        else:
                            if conn.tls.has_output:
                                self._output_ready.notify()
                            if conn.tls.closed_by_peer:
                                count = 0
                    if count == 0:
                        self._drop_connection("connection closed by peer", None, abort=False)
                    elif count > 0 and data:
                        self._engine.receive_data(data, now)
                        self._absorb(now)
                self._run_after_lock()
                if count <= 0:
                    return
        finally:
            view.release()

    def _writer(self, conn: _Connection) -> None:
        sock = conn.sock
        while True:
            with self._lock:
                while not conn.dropped and not self._engine.has_output():
                    if self._ended or (conn.tls is not None and conn.tls.has_output):
                        break
                    self._output_ready.wait()
                if conn.dropped:
                    return
                data = self._engine.data_to_send(time.monotonic())
                if conn.tls is not None:
                    data = conn.tls.encrypt(data)
                ended = self._ended
            if data:
                try:
                    # Outside the lock: a full send buffer blocks only this thread.
                    sock.sendall(data)
                except OSError as exc:
                    self._connection_failed(conn, exc, "")
                    return
            elif ended:
                # Everything (the final CLOSE_ACK or REJECT included) is written.
                with self._lock:
                    if conn is self._connection:
                        self._discard_connection(abort=False)
                self._run_after_lock()
                return

    def _heartbeat(self, conn: _Connection) -> None:
        sock = conn.sock
        next_probe = time.monotonic() + self._config.heartbeat_interval
        while True:
            with self._lock:
                if conn.dropped or self._ended:
                    return
                now = time.monotonic()
                deadline = self._engine.next_deadline()
                wake = min(deadline if deadline is not None else next_probe, next_probe)
                if wake > now:
                    self._timer_target = wake
                    self._timer.wait(wake - now)
                    self._timer_target = None
                    continue
                if self._inbox_full() or has_pending_input(sock):
                    # Silence that is ours: we stopped reading on purpose, or
                    # bytes are already waiting in the kernel and only our
                    # reader (starved on a busy machine) has not taken them.
                    self._engine.hold_liveness(now)
                self._engine.handle_timer(now)
                self._absorb(now)
            self._run_after_lock()
            if now >= next_probe:
                next_probe = now + self._config.heartbeat_interval
                error = probe_pending_error(sock)
                if error is not None:
                    self._connection_failed(conn, error, "")
                    return

    def _inbox_full(self) -> bool:
        return len(self._inbox) >= self._shell.max_queued_messages or self._inbox_bytes >= self._shell.max_queued_bytes

    # ------------------------------------------------------------ connector

    def _start_connector(self) -> None:
        thread = threading.Thread(target=self._guard, args=(self._connector,), name=f"{self._name}-connector", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _connector(self) -> None:
        """Client: keep the session connected until it ends."""
        assert self._address is not None
        delays = self._shell.backoff.delays(self._rng)
        first = True
        handshakes = 0
        while True:
            with self._lock:
                while self._connection is not None and not self._stopping:
                    self._changed.wait()
                if self._engine.counters.handshakes != handshakes:
                    handshakes = self._engine.counters.handshakes
                    delays = self._shell.backoff.delays(self._rng)  # a working link resets the backoff
                if self._stopping:
                    return
                delay = 0.0 if first and not self._ever_connected else next(delays)
                first = False
                deadline = time.monotonic() + delay
                while not self._stopping:
                    now = time.monotonic()
                    engine_deadline = self._engine.next_deadline()
                    if engine_deadline is not None and now >= engine_deadline:
                        self._engine.handle_timer(now)  # the resume window may be over
                        self._absorb(now)
                        break
                    if now >= deadline:
                        break
                    wait = deadline - now if engine_deadline is None else min(deadline, engine_deadline) - now
                    self._changed.wait(wait)
                stopping = self._stopping
            self._run_after_lock()
            if stopping:
                return
            if time.monotonic() < deadline:
                continue
            self._connect_once()

    def _connect_once(self) -> None:
        assert self._address is not None
        timeout = min(self._config.handshake_timeout, self._shell.connect_timeout)
        tls = None
        try:
            sock = socket.create_connection(self._address, timeout=timeout)
            if self._shell.ssl_context is not None:
                tls = TLSLayer(
                    self._shell.ssl_context, server_side=False, server_hostname=self._shell.server_hostname or self._address[0]
                )
                try:
                    tls.handshake(sock, timeout)
                except TLSHandshakeError:
                    close_socket(sock, abort=True)
                    raise
        except OSError as exc:
            with self._lock:
                self._last_cause = exc
                self._changed.notify_all()
            if not is_retryable(exc):
                with self._lock:
                    error = ChannelBroken(f"can't connect to {self._address}: {exc}")
                    error.__cause__ = exc
                    self._engine.close(time.monotonic())
                    self._engine.events_received()
                    self._end(error, self._engine.unacked(), str(exc))
                self._run_after_lock()
            logger.debug("%s: connect to %s failed: %s", self._name, self._address, exc)
            return
        sock.settimeout(None)
        configure_socket(sock, self._config)
        with self._lock:
            if self._stopping:
                self._after_lock.append(lambda: close_socket(sock))
            else:
                self._engine.connection_made(time.monotonic())
                self._install_connection(sock, tls)
        self._run_after_lock()

    def _wait_connected(self, timeout: float) -> None:
        """Client: block until the first handshake is done (connect's contract)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._ever_connected and not self._ended:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            if self._ever_connected:
                return
            error = self._end_error
            cause = self._last_cause
        self._teardown()
        self._release_journal()
        if error is not None:
            raise error
        raise TimeoutError(f"could not open a session with {self._address} within {timeout} s") from cause

    # ------------------------------------------------------------ messaging

    def _raise_if_ended(self) -> None:
        if self._end_error is not None:
            raise self._end_error

    def send(self, data: bytes, timeout: float | None = None) -> int:
        """Queue one message for delivery; return its sequence number.

        Blocks while the retransmit window is full. Raises TimeoutError
        (nothing queued) when ``timeout`` passes first, MessageTooLarge,
        ChannelClosed once closed and SessionLost once the session is lost.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise UsageError(f"send takes bytes, not {type(data).__name__}")
        payload = bytes(data)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            engine = self._engine
            while not engine.can_send(len(payload)):
                self._raise_if_ended()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("the retransmit window stayed full; nothing was queued")
                self._sendable.wait(remaining)
            self._raise_if_ended()
            seq = engine.send_message(payload, time.monotonic())
            position = self._journal.record_sent(seq, (payload,)) if self._journal is not None else 0
            if engine.state is SessionState.OPEN:
                self._output_ready.notify()
        if self._journal is not None:
            self._make_durable(position)
        return seq

    def send_many(self, messages: Iterable[bytes], timeout: float | None = None) -> int:
        """Queue several messages in order, taking the lock once per window's
        worth; return the sequence number of the last. On timeout, raises
        TimeoutError with ``queued`` set to how many were queued."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = [m if type(m) is bytes else bytes(m) for m in messages]
        try:
            return self._queue_many(pending, deadline)
        finally:
            if self._journal is not None:
                self._make_durable()  # also what was queued before a timeout

    def _queue_many(self, pending: list[bytes], deadline: float | None) -> int:
        queued = 0
        seq = 0
        while queued < len(pending):
            with self._lock:
                engine = self._engine
                self._raise_if_ended()
                batch = pending[queued:] if queued else pending
                first, count = engine.send_messages(batch, time.monotonic())
                if count:
                    if self._journal is not None:
                        self._journal.record_sent(first, batch[:count])
                    queued += count
                    seq = first + count - 1
                    if engine.state is SessionState.OPEN:
                        self._output_ready.notify()
                    continue
                if engine.state is SessionState.OPEN:
                    self._output_ready.notify()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    error = TimeoutError(f"the retransmit window stayed full; {queued} messages were queued")
                    error.queued = queued  # type: ignore[attr-defined]
                    raise error
                self._sendable.wait(remaining)
        return seq

    def _make_durable(self, position: int | None = None) -> None:
        """With a journal: return once what was recorded (up to ``position``)
        is on disk; one fsync serves every thread waiting (group commit).
        Also keeps the journal's size bounded by compacting it."""
        journal = self._journal
        assert journal is not None
        journal.sync(position)
        if journal.size() > _COMPACT_AT + 4 * self._config.window_bytes:
            journal.compact()

    def commit(self) -> None:
        """Confirm every message ``recv`` has returned so far.

        With a journal, only committed messages are acknowledged to the
        peer, and after a restart delivery resumes after the last commit:
        a committed message is never delivered again, an uncommitted one is.
        ``recv`` commits what it returned before each time it is called
        again (``auto_commit``), so explicit calls are needed only to
        confirm the last message before stopping, or to batch confirmations
        (with ``auto_commit=False``). Without a journal it only records.
        """
        with self._lock:
            upto = self._handed_out
            if upto <= self._engine.committed:
                return
        if self._journal is not None:
            self._make_durable(self._journal.record_consumed(upto))
        with self._lock:
            now = time.monotonic()
            if self._engine.state not in TERMINAL_STATES:
                self._engine.commit(upto, now)
                self._absorb(now)
        self._run_after_lock()

    @property
    def last_sent_seq(self) -> int:
        """Sequence number of the last message sent (durable, with a journal)."""
        with self._lock:
            return self._engine.next_seq - 1

    @property
    def last_committed_seq(self) -> int:
        """Sequence number of the last received message committed."""
        with self._lock:
            return self._engine.committed

    def recv(self, timeout: float | None = None) -> bytes:
        """The next message, in order. Raises TimeoutError when none arrives
        in time, ChannelClosed after the last message of a closed session,
        SessionLost if the session was lost."""
        if self._journal is not None and self._shell.auto_commit:
            self.commit()  # the application came back for more: it is done with the last one
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self._inbox:
                if self._ended or self._engine.state is SessionState.CLOSED:
                    self._raise_if_ended()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("no message arrived in time")
                self._readable.wait(remaining)
            message = self._inbox.popleft()
            self._inbox_bytes -= len(message)
            self._handed_out += 1
            if len(self._inbox) == self._shell.max_queued_messages - 1 or self._inbox_bytes < self._shell.max_queued_bytes:
                self._inbox_space.notify()
            return message

    def recv_many(self, max_messages: int = 1024, timeout: float | None = None) -> list[bytes]:
        """Up to ``max_messages`` messages at once (at least one), in order."""
        first = self.recv(timeout)
        out = [first]
        with self._lock:
            inbox = self._inbox
            while inbox and len(out) < max_messages:
                message = inbox.popleft()
                self._inbox_bytes -= len(message)
                out.append(message)
            self._handed_out += len(out) - 1
            self._inbox_space.notify()
        return out

    def __iter__(self) -> Channel:
        return self

    def __next__(self) -> bytes:
        try:
            return self.recv()
        except ChannelClosed:
            raise StopIteration from None

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the peer has acknowledged every message sent so far.

        Raises TimeoutError if it hasn't by ``timeout``; SessionLost or
        ChannelClosed (both carry ``unacked``) if the session ends first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._engine.unacked_count:
                self._raise_if_ended()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{self._engine.unacked_count} messages still unacknowledged")
                self._sendable.wait(remaining)

    # --------------------------------------------------------------- ending

    def close(self, timeout: float | None = 10.0) -> None:
        """Graceful close: flush, CLOSE handshake, then release every thread
        and socket. Idempotent.

        If the deadline passes, or the link fails, before every message was
        acknowledged, the channel is still released and SessionLost is
        raised once, listing the unacknowledged messages.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            already = self._stopping
        if not already:
            try:
                self.flush(None if deadline is None else max(0.0, deadline - time.monotonic()))
            except (TimeoutError, ReliableTCPError):
                pass
            with self._lock:
                if not self._ended:
                    now = time.monotonic()
                    self._engine.close(now)
                    self._absorb(now)
                    while not self._ended:
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            # Give up waiting for CLOSE_ACK: the session ends here.
                            self._drop_connection("close timed out", None, abort=True, notify=False)
                            self._absorb(time.monotonic())
                            break
                        self._changed.wait(remaining)
                self._stopping = True
            self._run_after_lock()
        self._teardown()
        self._release_journal()
        with self._lock:
            unacked, self._end_unacked = self._end_unacked, ()
            report = bool(unacked) and not self._reported_unacked
            self._reported_unacked = True
        if report:
            raise SessionLost("closed before every message was acknowledged", unacked)

    def abort(self) -> None:
        """Drop the session at once, without the close handshake (the peer
        will see its resume fail). Unacknowledged messages are discarded;
        use close() to learn which they were."""
        with self._lock:
            self._aborted = True
            if not self._ended:
                self._engine.abort(time.monotonic())
                self._engine.events_received()
                self._end(None, (), "aborted")
            self._drop_connection("aborted", None, abort=True, notify=False)
        self._run_after_lock()
        self._teardown()
        self._release_journal()

    def _release_journal(self) -> None:
        """Close the journal; after a complete clean close, delete it (there is
        nothing left to resume). After an abort or a lost session it stays:
        a restart reads the unacknowledged messages from it."""
        with self._lock:
            journal, self._journal = self._journal, None
            complete = isinstance(self._end_error, ChannelClosed) and not self._end_error.unacked and not self._aborted
        if journal is None:
            return
        journal.close()
        if complete:
            journal.discard()

    def _teardown(self) -> None:
        """Stop the connector and connection threads and join them."""
        with self._lock:
            self._stopping = True
            if self._ended:
                # The writer closes the connection itself once the last frame
                # (CLOSE_ACK, REJECT) is out; give it a moment to do so.
                self._changed.wait_for(lambda: self._connection is None, _FINAL_FLUSH_TIMEOUT)
            self._discard_connection(abort=not self._ended)
            for condition in (self._readable, self._sendable, self._output_ready, self._timer, self._changed, self._inbox_space):
                condition.notify_all()
            threads = list(self._threads)
        self._run_after_lock()
        current = threading.current_thread()
        for thread in threads:
            if thread is not current:
                thread.join(_JOIN_TIMEOUT)
                if thread.is_alive():  # pragma: no cover - a bug, loudly
                    logger.error("%s: thread %s did not stop", self._name, thread.name)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[0] is None:
            self.close()
        else:
            self.abort()

    def __repr__(self) -> str:
        return f"<Channel {self._name} {self.state.value} session={self.session_id[:8]}>"


def connect(
    address: tuple[str, int], *, timeout: float | None = None, journal: str | None = None, **options: Any
) -> Channel:
    """Open a session with the listener at ``address``; return once the
    first handshake is done.

    Retries refused or failed connections with backoff until ``timeout``
    (default: the ``connect_timeout`` option, 30 s). Keyword options are
    those of :class:`SessionConfig` and :class:`ShellOptions`.
    """
    config, shell, rest = split_options(options)
    if rest:
        raise TypeError(f"unknown options: {', '.join(sorted(rest))}")
    store = None
    if journal is None:
        engine = SessionEngine(config, client=True)
    else:
        # Durable: acknowledge only what the application committed, and pick
        # the session up where the journal left it.
        config = dataclasses.replace(config, ack_on_commit=True)
        store = Journal(journal)
        state = store.state
        if state.session_id:
            engine = SessionEngine.restore(
                config,
                session_id=state.session_id,
                secret=state.secret,
                unacked=sorted(state.unacked.items()),
                next_seq=state.next_seq,
                committed=state.consumed,
                now=time.monotonic(),
            )
        else:
            engine = SessionEngine(config, client=True)
    channel = Channel(engine, shell, address=(address[0], int(address[1])), journal=store)
    channel._start_connector()
    channel._wait_connected(shell.connect_timeout if timeout is None else timeout)
    return channel
