"""The listening side: accept loop, handshakes, the session registry and its reaper."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from ._transport import close_socket, configure_socket
from .channel import Channel, ChannelState, ShellOptions, split_options
from .config import SessionConfig
from .engine import SessionEngine
from .exceptions import ChannelClosed, FrameError, HandshakeRejected, ProtocolError, TLSHandshakeError, UnsupportedVersion
from .frames import Reject, RejectReason, encode
from .journal import Journal
from .server_core import ServerHandshake, SessionRegistry, reject_reply
from .state import SessionState
from .tls import TLSLayer

__all__ = ["Listener", "ListenerStatistics", "listen"]

logger = logging.getLogger(__name__)

_JOIN_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class ListenerStatistics:
    """A snapshot of a listener's counters."""

    sessions: int  # registered: connected or waiting to resume
    pending_handshakes: int
    rejected_handshakes: int  # refused before any session: limits, bad input, timeouts, wrong key
    sessions_failed: int  # ended by a protocol violation or a lost resume


class Listener:
    """Accepts connections, starts new sessions and reattaches resumed ones.

    :meth:`accept` returns each *new* session as a :class:`Channel`; a
    client that resumes is silently reattached to its existing channel.
    Detached sessions are kept for ``resume_window`` seconds, then expire
    (their channel raises SessionLost).
    """

    def __init__(
        self,
        address: tuple[str, int],
        config: SessionConfig,
        shell: ShellOptions,
        *,
        max_sessions: int = 1024,
        max_pending_handshakes: int = 64,
        backlog: int = 128,
        journal: str | None = None,
    ) -> None:
        self._journal_dir = journal
        if journal is not None:
            # Durable: acknowledge only what the application committed.
            config = dataclasses.replace(config, ack_on_commit=True)
        self._config = config
        self._shell = shell
        self._max_pending = max_pending_handshakes
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._registry = SessionRegistry(config, max_sessions=max_sessions)
        self._channels: dict[bytes, Channel] = {}
        self._new: queue.Queue[Channel] = queue.Queue()
        self._pending: set[socket.socket] = set()
        self._closed = False
        self.rejected_handshakes = 0
        self._sessions_failed = 0
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Accepted sockets inherit these; each is configured again anyway.
            configure_socket(self._sock, config)
            self._sock.bind(address)
            self._sock.listen(backlog)
        except OSError:
            self._sock.close()
            raise
        bound = self._sock.getsockname()
        self.address: tuple[str, int] = (bound[0], bound[1])
        self._threads: list[threading.Thread] = []
        if journal is not None:
            self._restore_sessions(journal)
        self._accept_thread = self._spawn(self._accept_loop, "accept")
        self._reaper_thread = self._spawn(self._reaper, "reaper")

    def _restore_sessions(self, directory: str) -> None:
        """Bring back every journaled session after a restart: each waits for
        its client's resume and is offered again by accept()."""
        os.makedirs(directory, exist_ok=True)
        now = time.monotonic()
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if not os.path.isdir(path):
                continue
            journal = Journal(path)
            state = journal.state
            if not state.session_id:
                journal.close()
                journal.discard()
                continue
            engine = SessionEngine.restore(
                self._config,
                client=False,
                session_id=state.session_id,
                secret=state.secret,
                previous_secret=state.previous_secret,
                unacked=sorted(state.unacked.items()),
                next_seq=state.next_seq,
                committed=state.consumed,
                now=now,
            )
            self._registry.adopt(engine)
            channel = Channel(engine, self._shell, on_end=self._session_ended, journal=journal, restored=True)
            self._channels[engine.session_id] = channel
            self._new.put(channel)
            logger.info("restored session %s from %s", engine.session_id.hex()[:8], path)

    def _spawn(self, target: Any, role: str, *args: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=f"rtcp-listener-{self.address[1]}-{role}", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()
        return thread

    # ------------------------------------------------------------ accepting

    def accept(self, timeout: float | None = None) -> Channel:
        """The next new session. Raises TimeoutError, or ChannelClosed once
        the listener is closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed and self._new.empty():
                raise ChannelClosed("the listener is closed")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("no new session arrived in time")
            try:
                # Wake now and then to notice close().
                return self._new.get(timeout=0.2 if remaining is None else min(remaining, 0.2))
            except queue.Empty:
                continue

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, peer = self._sock.accept()
            except OSError as exc:
                if self._closed:
                    return
                logger.warning("accept failed: %s", exc)
                time.sleep(0.05)  # e.g. EMFILE: don't spin; the condition is external
                continue
            with self._lock:
                too_many = len(self._pending) >= self._max_pending
                if not too_many:
                    self._pending.add(sock)
            if too_many:
                logger.warning("%s: too many pending handshakes; dropped", peer)
                self.rejected_handshakes += 1
                close_socket(sock, abort=True)
                continue
            self._spawn(self._handshake, f"handshake-{peer[1]}", sock, peer)

    def _handshake(self, sock: socket.socket, peer: Any) -> None:
        """Read the HELLO within the handshake timeout, then start or resume its session."""
        attached = False
        tls = None
        try:
            configure_socket(sock, self._config)
            if self._shell.ssl_context is not None:
                tls = TLSLayer(self._shell.ssl_context, server_side=True)
                try:
                    tls.handshake(sock, self._config.handshake_timeout)
                except TLSHandshakeError as exc:
                    logger.info("%s: %s", peer, exc)
                    self.rejected_handshakes += 1
                    return
            hello = self._read_hello(sock, peer, tls)
            if hello is None:
                return
            attached = self._attach(sock, hello, peer, tls)
        finally:
            with self._lock:
                self._pending.discard(sock)
            if not attached:
                close_socket(sock, abort=True)

    def _read_hello(self, sock: socket.socket, peer: Any, tls: TLSLayer | None) -> Any:
        reader = ServerHandshake(self._config.psk)
        deadline = time.monotonic() + self._config.handshake_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._refuse(sock, peer, tls, RejectReason.HANDSHAKE_TIMEOUT, "no HELLO in time")
                return None
            sock.settimeout(remaining)
            try:
                data = sock.recv(512)
            except TimeoutError:
                continue
            except OSError as exc:
                logger.info("%s: connection failed during the handshake: %s", peer, exc)
                return None
            if not data:
                return None
            if tls is not None:
                data = tls.decrypt(data)
                if tls.closed_by_peer:
                    return None
                if not data:
                    continue  # part of a TLS record
            try:
                hello = reader.receive_data(data)
                challenge = reader.data_to_send()
                if challenge:
                    sock.sendall(tls.encrypt(challenge) if tls is not None else challenge)
            except OSError as exc:
                logger.info("%s: connection failed during the handshake: %s", peer, exc)
                return None
            except HandshakeRejected as rejected:
                self._refuse(sock, peer, tls, RejectReason(rejected.reason), str(rejected), reject_reply(rejected))
                return None
            except UnsupportedVersion as exc:
                self._refuse(sock, peer, tls, RejectReason.UNSUPPORTED_VERSION, str(exc))
                return None
            except (FrameError, ProtocolError) as exc:
                self._refuse(sock, peer, tls, RejectReason.PROTOCOL_ERROR, str(exc))
                return None
            if hello is not None:
                sock.settimeout(None)
                return hello

    def _refuse(
        self, sock: socket.socket, peer: Any, tls: TLSLayer | None, reason: RejectReason, text: str, reply: bytes | None = None
    ) -> None:
        logger.info("%s: handshake refused: %s (%s)", peer, reason.name, text)
        self.rejected_handshakes += 1
        data = reply if reply is not None else encode(Reject(reason, text))
        try:
            sock.settimeout(1.0)
            sock.sendall(tls.encrypt(data) if tls is not None else data)
        except OSError:
            pass

    def _attach(self, sock: socket.socket, hello: Any, peer: Any, tls: TLSLayer | None) -> bool:
        now = time.monotonic()
        with self._lock:
            if self._closed:
                return False
            channel = self._channels.get(hello.session_id) if hello.resume else None
            # Lock order: listener, then channel. Channel threads never take
            # the listener's lock while holding their own.
            channel_lock = channel._lock if channel is not None else contextlib.nullcontext()
            failure: HandshakeRejected | None
            with channel_lock:
                try:
                    attached = self._registry.handshake(hello, now)
                except HandshakeRejected as rejected:
                    if channel is not None:
                        channel._absorb(now)  # a bad resume claim ends that session
                    failure = rejected
                else:
                    failure = None
                    if attached.is_new:
                        journal = None
                        if self._journal_dir is not None:
                            journal = Journal(os.path.join(self._journal_dir, attached.engine.session_id.hex()))
                        channel = Channel(
                            attached.engine,
                            self._shell,
                            on_end=self._session_ended,
                            on_confirmed=self._new.put,
                            journal=journal,
                        )
                        self._channels[attached.engine.session_id] = channel
                    assert channel is not None
                    with channel._lock if attached.is_new else contextlib.nullcontext():
                        channel._install_connection(sock, tls)
        if channel is not None:
            channel._run_after_lock()
        if failure is not None:
            self._refuse(sock, peer, tls, RejectReason(failure.reason), str(failure), reject_reply(failure))
            return False
        assert channel is not None
        if attached.is_new:
            # accept() gets it once the client has spoken after ACCEPT (PeerConfirmed).
            logger.info("%s: new session %s", peer, attached.engine.session_id.hex()[:8])
        else:
            logger.info("%s: resumed session %s", peer, attached.engine.session_id.hex()[:8])
        return True

    def _session_ended(self, channel: Channel) -> None:
        failed = channel.state is ChannelState.FAILED
        with self._lock:
            self._sessions_failed += failed
            self._registry.remove(channel._engine)
            self._channels.pop(channel._engine.session_id, None)

    def _reaper(self) -> None:
        """Fire the timers of detached sessions so they expire on time."""
        while True:
            with self._lock:
                if self._closed:
                    return
                channels = list(self._channels.values())
            wake = time.monotonic() + min(1.0, self._config.resume_window / 4)
            for channel in channels:
                with channel._lock:
                    engine = channel._engine
                    if engine.state is SessionState.DETACHED:
                        now = time.monotonic()
                        engine.handle_timer(now)
                        channel._absorb(now)
                        deadline = engine.next_deadline()
                        if deadline is not None:
                            wake = min(wake, deadline)
                channel._run_after_lock()
            with self._lock:
                if self._closed:
                    return
                self._changed.wait(max(0.0, wake - time.monotonic()))

    # --------------------------------------------------------------- ending

    def statistics(self) -> ListenerStatistics:
        """A frozen snapshot of the listener's counters."""
        with self._lock:
            return ListenerStatistics(
                sessions=len(self._registry),
                pending_handshakes=len(self._pending),
                rejected_handshakes=self.rejected_handshakes,
                sessions_failed=self._sessions_failed,
            )

    @property
    def session_count(self) -> int:
        """Sessions currently registered (connected or waiting to resume)."""
        with self._lock:
            return len(self._registry)

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting and end every session: gracefully where the link
        allows within ``timeout``, otherwise by abort. Idempotent."""
        with self._lock:
            if self._closed:
                channels: list[Channel] = []
            else:
                self._closed = True
                channels = list(self._channels.values())
                self._changed.notify_all()
            pending = list(self._pending)
        close_socket(self._sock)  # shutdown() wakes the blocked accept()
        for sock in pending:
            close_socket(sock, abort=True)
        while not self._new.empty():
            channel = self._new.get_nowait()
            if channel not in channels:
                channels.append(channel)
        deadline = time.monotonic() + timeout
        for channel in channels:
            try:
                channel.close(timeout=max(0.1, deadline - time.monotonic()))
            except Exception as exc:  # a session that could not finish is reported, not fatal
                logger.warning("closing %r: %s", channel, exc)
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(_JOIN_TIMEOUT)

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Listener {self.address[0]}:{self.address[1]} sessions={self.session_count}>"


def listen(address: tuple[str, int], **options: Any) -> Listener:
    """Listen on ``address`` (port 0 picks a free port; see ``.address``).

    Keyword options: those of :class:`SessionConfig` and
    :class:`ShellOptions`, plus ``max_sessions``, ``max_pending_handshakes``
    and ``backlog``.
    """
    config, shell, rest = split_options(options)
    listener_options = {
        k: rest.pop(k) for k in ("max_sessions", "max_pending_handshakes", "backlog", "journal") if k in rest
    }
    if rest:
        raise TypeError(f"unknown options: {', '.join(sorted(rest))}")
    return Listener((address[0], int(address[1])), config, shell, **listener_options)
