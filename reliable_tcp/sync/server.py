"""The threaded listening side: the accept loop, handshakes, the sessions.

What is decided (who may open or resume a session, what a refusal says,
the restore after a restart, what is offered to ``accept()``) is
``common/listener.py``'s; this file accepts, reads, writes and waits.

Threads: one accept thread, and a short-lived handshake thread per new
connection (bounded by ``max_pending_handshakes`` and ``handshake_timeout``)
that reads the HELLO, then starts or resumes its session. Sessions' timers
(including the resume window of detached ones) are fired by the shared
timer thread, not here.

The listener makes each session's machinery (``_session.SessionShell``)
and its public ``Channel``, and uses the machinery through its doors only:
``open_link`` (attach a connection), ``end_restored``, ``begin_close`` /
``finish_close`` when it closes, and the ``on_end`` and ``on_confirmed``
callbacks it passes in. ``accept()`` hands out the Channel. Lock order: the
listener's lock is never held while a session's is taken; the two are used
one after the other.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections import deque
from typing import Any, Unpack

from ..common import arguments
from ..common.listener import HANDED_OVER, ListenerBook, log_refusal, read_hello
from ..common.options import ListenOptions, ShellOptions, resolve_options
from ..common.sockets import close_socket, configure_socket
from ..common.status import ListenerStatistics
from ..common.timing import DRAIN_CLOSE_RESERVE, DRAIN_LINGER, REJECT_LINGER
from ..core.config import SessionConfig
from ..core.engine import SessionEngine
from ..core.frames import Hello, RejectReason
from ..core.handshake import ServerHandshake, reject_reply
from ..durable.session_journal import Durable
from ..exceptions import ChannelClosed, HandshakeRejected, ReliableTCPError, TLSHandshakeError
from ._deadline import Deadline
from ._session import SessionShell
from .channel import Channel
from .tls import TLSLayer

__all__ = ["Listener", "listen"]

logger = logging.getLogger(__name__)

#: Refused connections lingering at once, at most (each holds a descriptor);
#: beyond, one more is reset at once.
MAX_REFUSED_LINGERING = 256


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
        node_id: int | None = None,
        backlog: int = 128,
        journal: str | None = None,
    ) -> None:
        # lock:
        self._book: ListenerBook[SessionShell] = ListenerBook(config, max_sessions=max_sessions, node_id=node_id, journal=journal)
        self._config = config = self._book.config
        self._shell = shell
        self._max_pending = max_pending_handshakes
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a session to offer, or closed
        self._pending: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._accept_order = itertools.count(1)
        self._stopped_draining = threading.Event()  # close() ends a drain's pacing
        # Connections refused by the accept thread, closed after a linger (accept thread only).
        self._refused: deque[tuple[float, socket.socket]] = deque()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and address[0] in ("::", ""):
                # Every address means IPv4's too, whatever net.ipv6.bindv6only says.
                self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            configure_socket(self._sock, config)  # accepted sockets inherit these
            self._sock.bind(address)
            self._sock.listen(backlog)
        except OSError:
            self._sock.close()
            raise
        bound = self._sock.getsockname()
        self.address: tuple[str, int] = (bound[0], bound[1])
        if journal is not None:
            try:
                self._restore_sessions(journal)
            except BaseException:
                self._sock.close()  # a listen() that raises keeps nothing it took
                raise
        self._spawn(self._accept_loop, "accept")

    def _restore_sessions(self, directory: str) -> None:
        """Bring back every journaled session after a restart (ListenerBook.restore)."""
        # No lock: no other thread runs yet, and a channel's lock is never
        # taken under the listener's.
        self._book.restore(Durable.open_all_for_listener(directory, self._config), self._restored_channel)

    def _restored_channel(self, engine: SessionEngine, durable: Durable) -> SessionShell:
        session = SessionShell(engine, self._shell, durable=durable, restored=True, on_end=self._session_ended)
        Channel(session)
        return session

    def _spawn(self, target: Any, role: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=f"rtcp-listener-{self.address[1]}-{role}", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    # ------------------------------------------------------------ accepting

    def accept(self, timeout: float | None = None) -> Channel:
        """The next new session. Raises TimeoutError, or ChannelClosed once
        the listener is closed."""
        with self._lock:
            book = self._book
            if not Deadline(arguments.timeout(timeout)).wait(self._changed, lambda: bool(book.offered) or book.closed):
                raise TimeoutError("no new session arrived in time")
            if book.offered:
                channel = book.offered.popleft().channel
                assert channel is not None  # every session the listener makes has its channel
                return channel
            raise ChannelClosed("the listener is closed")

    def _offer(self, session: SessionShell) -> None:
        """A new session's client confirmed it: accept() may hand it out."""
        with self._lock:
            if self._book.offer(session):
                self._changed.notify()

    def _accept_loop(self) -> None:
        while True:
            self._close_refused(time.monotonic())
            try:
                # While refused connections linger, accept() wakes to close them in time.
                self._sock.settimeout(REJECT_LINGER if self._refused else None)
                sock, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._book.closed:
                    self._close_refused(None)
                    return
                logger.warning("accept failed: %s", exc)
                time.sleep(0.05)  # e.g. EMFILE: the condition is external; don't spin
                continue
            order = next(self._accept_order)
            with self._lock:
                too_many = self._book.closed or len(self._pending) >= self._max_pending
                if not too_many:
                    self._pending.add(sock)
                else:
                    self._book.rejected_handshakes += 1
                    refusal = self._book.too_many_handshakes()
            if too_many:
                self._refuse_at_once(sock, peer, refusal)
                continue
            self._spawn(self._handshake, f"handshake-{peer[1]}", sock, peer, order)

    def _refuse_at_once(self, sock: socket.socket, peer: Any, refusal: HandshakeRejected) -> None:
        """Too many handshakes under way: answer REJECT SERVER_BUSY with the
        retry hint from the accept thread itself (no thread for it), FIN,
        and close it :data:`REJECT_LINGER` later, so the REJECT is read
        before anything resets the connection. A TLS listener can't answer
        in plain text before the TLS handshake: it resets, as a full
        backlog would."""
        if self._shell.ssl_context is not None or self._book.closed or len(self._refused) >= MAX_REFUSED_LINGERING:
            logger.warning("%s: too many pending handshakes; dropped", peer)
            close_socket(sock, abort=True)
            return
        logger.warning("%s: too many pending handshakes; refused with a retry hint", peer)
        try:
            sock.send(reject_reply(refusal), socket.MSG_DONTWAIT)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            close_socket(sock, abort=True)
            return
        self._refused.append((time.monotonic() + REJECT_LINGER, sock))

    def _close_refused(self, now: float | None) -> None:
        """Close the refused connections whose linger has passed (all: ``now`` None)."""
        while self._refused and (now is None or self._refused[0][0] <= now):
            close_socket(self._refused.popleft()[1], abort=True)

    def _handshake(self, sock: socket.socket, peer: Any, order: int) -> None:
        """Read the HELLO within the handshake timeout, then start or resume its session."""
        admitted = False
        try:
            configure_socket(sock, self._config)
            tls = None
            if self._shell.ssl_context is not None:
                tls = TLSLayer(self._shell.ssl_context, server_side=True)
                try:
                    tls.handshake(sock, self._config.handshake_timeout)
                except TLSHandshakeError as exc:
                    logger.info("%s: %s", peer, exc)
                    self._count_rejected()
                    return
            hello = self._read_hello(sock, peer, tls)
            if hello is None:
                return
            if _peer_gone(sock):
                # A reconnect the client gave up on while we were stalled: it
                # must not take its session over from the client's live attempt.
                logger.info("%s: the client already left; ignored", peer)
                return
            admitted = self._admit(sock, hello, peer, tls, order)
        finally:
            with self._lock:
                self._pending.discard(sock)
            if not admitted:
                close_socket(sock, abort=True)

    def _read_hello(self, sock: socket.socket, peer: Any, tls: TLSLayer | None) -> Hello | None:
        reader = ServerHandshake(self._config.psk)
        deadline = Deadline(self._config.handshake_timeout)
        # What arrived with the TLS handshake's last flight (the client's
        # Finished and its HELLO in one read) already sits in the TLS layer:
        # take it before waiting for more, which may never come.
        leftover = tls.decrypt(b"") if tls is not None else b""
        while True:
            if leftover:
                data, leftover = leftover, b""
            else:
                remaining = deadline.remaining()
                if remaining is not None and remaining <= 0:
                    self._refuse(sock, peer, tls, HandshakeRejected(RejectReason.HANDSHAKE_TIMEOUT, "no HELLO in time"))
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
                    if not data and not tls.closed_by_peer:
                        continue  # part of a TLS record
            if tls is not None and tls.closed_by_peer:
                return None
            hello, challenge, refusal = read_hello(reader, data)
            if refusal is not None:
                self._refuse(sock, peer, tls, refusal)
                return None
            try:
                if challenge:
                    sock.sendall(tls.encrypt(challenge) if tls is not None else challenge)
            except OSError as exc:
                logger.info("%s: connection failed during the handshake: %s", peer, exc)
                return None
            if hello is not None:
                sock.settimeout(None)
                return hello

    def _admit(self, sock: socket.socket, hello: Hello, peer: Any, tls: TLSLayer | None, order: int) -> bool:
        """Start or resume the session ``hello`` names (ListenerBook decides);
        whether it took the socket."""
        if hello.resume:
            with self._lock:
                target = self._book.resume_target(hello)
            refusal = target if isinstance(target, HandshakeRejected) else None
            if not isinstance(target, HandshakeRejected):
                try:
                    target.open_link(sock, tls, order=order, hello=hello, new_secret=self._book.registry.new_secret())
                except HandshakeRejected as rejected:
                    refusal = rejected
            if refusal is not None:
                self._refuse(sock, peer, tls, refusal)
                return False
            logger.info("%s: resumed session %s", peer, hello.session_id.hex())
            return True
        with self._lock:
            started = self._book.start(hello, time.monotonic())
        if isinstance(started, HandshakeRejected):
            self._refuse(sock, peer, tls, started)
            return False
        engine = started
        durable = None
        path = self._book.journal_path(engine)
        if path is not None:
            try:
                durable = Durable.open(path, self._config)
            except (OSError, ReliableTCPError) as exc:
                with self._lock:
                    refusal = self._book.journal_failed(engine, exc)
                self._refuse(sock, peer, tls, refusal)
                return False
        session = SessionShell(engine, self._shell, durable=durable, on_end=self._session_ended, on_confirmed=self._offer)
        Channel(session)
        with self._lock:
            self._book.add(engine, session)
        session.open_link(sock, tls, order=order)
        # accept() gets it once the client has spoken after ACCEPT (PeerConfirmed).
        logger.info("%s: new session %s", peer, engine.session_id.hex())
        return True

    def _refuse(self, sock: socket.socket, peer: Any, tls: TLSLayer | None, refusal: HandshakeRejected) -> None:
        """Answer REJECT, then end the connection in order: our FIN, and a
        short wait for the peer's, so the REJECT is read, not reset away."""
        log_refusal(logger, f"{peer}: ", refusal)
        self._count_rejected()
        data = reject_reply(refusal)
        deadline = Deadline(min(REJECT_LINGER, self._config.handshake_timeout))
        try:
            sock.settimeout(deadline.remaining())
            sock.sendall(tls.encrypt(data) if tls is not None else data)
            sock.shutdown(socket.SHUT_WR)
            while not deadline.expired():
                sock.settimeout(deadline.remaining())
                if not sock.recv(4096):
                    break
        except OSError:
            pass

    def _count_rejected(self) -> None:
        with self._lock:
            self._book.rejected_handshakes += 1

    def _session_ended(self, session: SessionShell) -> None:
        with self._lock:
            self._book.ended(session)
            self._changed.notify_all()  # a drain waits for the last one

    # --------------------------------------------------------------- ending

    def statistics(self) -> ListenerStatistics:
        """A frozen snapshot of the listener's counters."""
        with self._lock:
            return self._book.statistics(len(self._pending))

    @property
    def draining(self) -> bool:
        """Whether :meth:`drain` has begun (new sessions are refused from then on)."""
        with self._lock:
            return self._book.draining is not None

    @property
    def session_count(self) -> int:
        """Sessions currently registered (connected or waiting to resume)."""
        with self._lock:
            return len(self._book.registry)

    def drain(self, timeout: float = 30.0, *, retry_after: float = 5.0, rate: float | None = None) -> None:
        """Empty the listener before a planned restart, then close it.

        From now on every new session is refused (SERVER_BUSY with the hint
        to come back in ``retry_after`` seconds, which clients of this
        library honour). With a journal, every session's connection is then
        ended in order, ``rate`` per second (default: spread over half of
        ``timeout``), and its client's resume refused with the same hint:
        the session waits in the journal, and the restarted listener takes
        it back with nothing lost. Without a journal the sessions can't
        outlive this process: drain waits until their owners have closed
        them (resumes are still taken meanwhile), at most ``timeout``, then
        closes the rest as :meth:`close` does. Idempotent; returns once the
        listener is closed (docs/guide.md, "Planned restarts").
        """
        deadline = Deadline(timeout)
        with self._lock:
            if self._book.closed:
                return
            sessions, pace = self._book.drain(retry_after, timeout=timeout, rate=rate)
        logger.info("listener on port %d: draining %d sessions", self.address[1], len(sessions))
        if self._book.journal is None:
            # Leave the sessions that remain time for their close handshake.
            waiting = deadline.before(min(DRAIN_CLOSE_RESERVE, timeout / 4))
            with self._lock:
                waiting.wait(self._changed, lambda: not self._book.channels)
            self._shut(deadline, end_sessions=True)
            return
        started = time.monotonic()
        for number, session in enumerate(sessions):
            if self._stopped_draining.wait(max(0.0, started + number * pace - time.monotonic())) or deadline.expired():
                break
            session.move_away("the listener is draining before a restart")
        # The last ones moved get their resume refused with the hint too,
        # rather than a closed port.
        self._stopped_draining.wait(deadline.earlier(DRAIN_LINGER).remaining())
        self._shut(deadline, end_sessions=False)

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting and end every session within ``timeout``: all of
        them start their close handshake at once; those that can't finish in
        time are cut. Idempotent. A channel the application accepted keeps
        its report: its own calls raise SessionLost for what was not acknowledged."""
        self._shut(Deadline(timeout), end_sessions=True)

    def _shut(self, deadline: Deadline, *, end_sessions: bool) -> None:
        """Close: end every session (``end_sessions``), or release each
        unchanged in its journal for the restarted listener (a drain)."""
        with self._lock:
            if self._book.closed:
                return
            sessions = self._book.close()
            pending = list(self._pending)
            self._changed.notify_all()
        self._stopped_draining.set()
        close_socket(self._sock)  # shutdown() wakes the blocked accept()
        for sock in pending:
            close_socket(sock, abort=True)
        if end_sessions:
            for session in sessions:
                session.begin_close()
            for session in sessions:
                # Not the owner's report: a lost session's journal stays, to be
                # reported after a restart (the owner's own calls report it now).
                session.finish_close(deadline, reported=False)
        else:
            for session in sessions:
                session.hand_over(deadline, HANDED_OVER)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            if not deadline.earlier(1.0).join(thread):
                logger.error("listener thread %s did not stop in time", thread.name)

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Listener {self.address[0]}:{self.address[1]} sessions={self.session_count}>"


def _peer_gone(sock: socket.socket) -> bool:
    """Whether the client already closed or reset this connection (a peek
    that takes nothing and never blocks)."""
    try:
        return socket.socket.recv(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def listen(
    address: tuple[str, int],
    *,
    journal: str | None = None,
    config: SessionConfig | None = None,
    shell: ShellOptions | None = None,
    **options: Unpack[ListenOptions],
) -> Listener:
    """Listen on ``address`` (port 0 picks a free port; see ``.address``).

    Keyword options: those of :func:`~reliable_tcp.connect`, plus
    ``max_sessions``, ``max_pending_handshakes``, ``backlog`` and
    ``node_id`` (1..65535: carried in every session id this listener issues,
    so a load balancer can route a resume to this node; docs/scaling.md).
    With ``journal`` (a directory), sessions survive a restart of this process.
    """
    resolved, shell_options, extra = resolve_options(
        options, config, shell, extra=("max_sessions", "max_pending_handshakes", "backlog", "node_id")
    )
    return Listener((address[0], int(address[1])), resolved, shell_options, journal=journal, **extra)
