"""The listening side: the accept loop, handshakes, and the registry of sessions.

Threads: one accept thread, and a short-lived handshake thread per new
connection (bounded by ``max_pending_handshakes`` and ``handshake_timeout``)
that reads the HELLO, then starts or resumes its session. Sessions' timers
(including the resume window of detached ones) are fired by the shared
timer thread, not here.

The listener uses a channel through its door only: ``Channel._open_link``
(attach a connection), plus the ``on_end`` and ``on_confirmed`` callbacks
it passes in, and ``Channel._begin_close`` / ``_finish_close`` when it
closes. Lock order: the listener's lock is never held while a channel's
is taken; the two are used one after the other.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections import deque
from typing import Any, Unpack

from ..common.options import ListenOptions, ShellOptions, resolve_options
from ..common.sockets import close_socket, configure_socket
from ..common.status import ChannelState, ListenerStatistics
from ..core.config import SessionConfig
from ..core.frames import Hello, RejectReason
from ..core.handshake import ServerHandshake, SessionRegistry, reject_reply
from ..durable.session_journal import Durable
from ..exceptions import (
    ChannelClosed,
    FrameError,
    HandshakeRejected,
    ProtocolError,
    ReliableTCPError,
    TLSHandshakeError,
    UnsupportedVersion,
)
from ._deadline import Deadline
from .channel import Channel
from .tls import TLSLayer

__all__ = ["Listener", "listen"]

logger = logging.getLogger(__name__)

#: After a REJECT: how long to keep reading, so our FIN (not an RST) ends it.
_REJECT_LINGER = 1.0


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
        node_id: int = 0,
        backlog: int = 128,
        journal: str | None = None,
    ) -> None:
        self._journal_dir = journal
        if journal is not None:
            config = Durable.durable_config(config)
        self._config = config
        self._shell = shell
        self._max_pending = max_pending_handshakes
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a session to offer, or closed
        self._registry = SessionRegistry(config, max_sessions=max_sessions, node_id=node_id)
        self._channels: dict[bytes, Channel] = {}
        self._offered: deque[Channel] = deque()
        self._pending: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._accept_order = itertools.count(1)
        self._closed = False
        self._rejected_handshakes = 0
        self._sessions_failed = 0
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
        """Bring back every journaled session after a restart: each waits for
        its client's resume and is offered again by accept(). A session that
        had ended is never resumed: a closed one is deleted, a lost one is
        offered already ended, so its owner learns once what was never
        acknowledged, then its journal is retired."""
        for durable in Durable.open_all_for_listener(directory, self._config):
            restored = durable.restore_for_listener(self._config)
            if restored is None:
                continue
            engine, ended = restored
            channel = Channel(engine, self._shell, durable=durable, restored=True, on_end=self._session_ended)
            if ended is not None:
                channel._end_restored(f"{ended[1]} (before the restart)", engine.unacked())
            else:
                self._registry.adopt(engine)
                self._channels[engine.session_id] = channel
            self._offered.append(channel)
            logger.info("restored session %s from %s", engine.session_id.hex()[:8], durable.directory)

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
            if not Deadline(timeout).wait(self._changed, lambda: bool(self._offered) or self._closed):
                raise TimeoutError("no new session arrived in time")
            if self._offered:
                return self._offered.popleft()
            raise ChannelClosed("the listener is closed")

    def _offer(self, channel: Channel) -> None:
        """A new session's client confirmed it: accept() may hand it out."""
        with self._lock:
            if not self._closed:
                self._offered.append(channel)
                self._changed.notify()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, peer = self._sock.accept()
            except OSError as exc:
                if self._closed:
                    return
                logger.warning("accept failed: %s", exc)
                time.sleep(0.05)  # e.g. EMFILE: the condition is external; don't spin
                continue
            order = next(self._accept_order)
            with self._lock:
                too_many = self._closed or len(self._pending) >= self._max_pending
                if not too_many:
                    self._pending.add(sock)
                else:
                    self._rejected_handshakes += 1
            if too_many:
                logger.warning("%s: too many pending handshakes; dropped", peer)
                close_socket(sock, abort=True)
                continue
            self._spawn(self._handshake, f"handshake-{peer[1]}", sock, peer, order)

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
        while True:
            remaining = deadline.remaining()
            if remaining is not None and remaining <= 0:
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
                self._refuse(sock, peer, tls, RejectReason(rejected.reason), rejected.text)
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

    def _admit(self, sock: socket.socket, hello: Hello, peer: Any, tls: TLSLayer | None, order: int) -> bool:
        """Start or resume the session ``hello`` names; whether it took the socket."""
        if hello.resume:
            with self._lock:
                channel = None if self._closed else self._channels.get(hello.session_id)
            try:
                if channel is None:
                    raise self._registry.unknown_session(hello)
                channel._open_link(sock, tls, order=order, hello=hello, new_secret=self._registry.new_secret())
            except HandshakeRejected as rejected:
                self._refuse(sock, peer, tls, RejectReason(rejected.reason), rejected.text)
                return False
            logger.info("%s: resumed session %s", peer, hello.session_id.hex()[:8])
            return True
        with self._lock:
            if self._closed:
                return False
            try:
                engine = self._registry.start(hello, time.monotonic())
            except HandshakeRejected as rejected:
                refusal: HandshakeRejected | None = rejected
            else:
                refusal = None
        if refusal is not None:
            self._refuse(sock, peer, tls, RejectReason(refusal.reason), refusal.text)
            return False
        durable = None
        if self._journal_dir is not None:
            try:
                durable = Durable.open(os.path.join(self._journal_dir, engine.session_id.hex()), self._config)
            except (OSError, ReliableTCPError) as exc:
                logger.error("%s: no journal for a new session: %s", peer, exc)
                with self._lock:
                    self._registry.forget(engine.session_id)
                self._refuse(sock, peer, tls, RejectReason.SERVER_BUSY, "the server can't journal a new session")
                return False
        channel = Channel(engine, self._shell, durable=durable, on_end=self._session_ended, on_confirmed=self._offer)
        with self._lock:
            self._channels[engine.session_id] = channel
        channel._open_link(sock, tls, order=order)
        # accept() gets it once the client has spoken after ACCEPT (PeerConfirmed).
        logger.info("%s: new session %s", peer, engine.session_id.hex()[:8])
        return True

    def _refuse(self, sock: socket.socket, peer: Any, tls: TLSLayer | None, reason: RejectReason, text: str) -> None:
        """Answer REJECT, then end the connection in order: our FIN, and a
        short wait for the peer's, so the REJECT is read, not reset away."""
        logger.info("%s: handshake refused: %s (%s)", peer, reason.name, text)
        self._count_rejected()
        data = reject_reply(HandshakeRejected(reason, text))
        deadline = Deadline(min(_REJECT_LINGER, self._config.handshake_timeout))
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
            self._rejected_handshakes += 1

    def _session_ended(self, channel: Channel) -> None:
        failed = channel.state is ChannelState.FAILED
        session_id = bytes.fromhex(channel.session_id)
        with self._lock:
            self._sessions_failed += failed
            self._registry.forget(session_id)
            if self._channels.get(session_id) is channel:
                del self._channels[session_id]

    # --------------------------------------------------------------- ending

    def statistics(self) -> ListenerStatistics:
        """A frozen snapshot of the listener's counters."""
        with self._lock:
            return ListenerStatistics(
                sessions=len(self._registry),
                pending_handshakes=len(self._pending),
                rejected_handshakes=self._rejected_handshakes,
                sessions_failed=self._sessions_failed,
            )

    @property
    def session_count(self) -> int:
        """Sessions currently registered (connected or waiting to resume)."""
        with self._lock:
            return len(self._registry)

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting and end every session within ``timeout``: all of
        them start their close handshake at once; those that can't finish in
        time are cut. Idempotent. A channel the application accepted keeps
        its report: its own calls raise SessionLost for what was not acknowledged."""
        deadline = Deadline(timeout)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            channels = list(self._channels.values())
            pending = list(self._pending)
            self._changed.notify_all()
        close_socket(self._sock)  # shutdown() wakes the blocked accept()
        for sock in pending:
            close_socket(sock, abort=True)
        for channel in channels:
            channel._begin_close()
        for channel in channels:
            # Not the owner's report: a lost session's journal stays, to be
            # reported after a restart (the owner's own calls report it now).
            channel._finish_close(deadline, reported=False)
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
