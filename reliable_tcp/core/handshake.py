"""Pure server-side session handling: the first frames of a connection and the session registry.

The listener's shell feeds a new connection's first bytes to a
:class:`ServerHandshake` (the HELLO, and with a pre-shared key the
CHALLENGE and PROOF), then asks the :class:`SessionRegistry` to start or
resume the session the HELLO names. A refusal is a
:class:`~reliable_tcp.exceptions.HandshakeRejected`; :func:`reject_reply`
gives the REJECT frame to answer it with.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from ..exceptions import HandshakeRejected, ProtocolError
from . import auth
from .config import SessionConfig
from .engine import SessionEngine
from .frames import (
    ID_SIZE,
    MAX_NODE_ID,
    NODE_ID_SIZE,
    NONCE_SIZE,
    Challenge,
    FrameDecoder,
    Hello,
    Proof,
    Reject,
    RejectReason,
    encode,
    node_id_of,
)
from .state import TERMINAL_STATES

__all__ = ["HandshakeReader", "ServerHandshake", "SessionRegistry", "Attached", "reject_reply"]

logger = logging.getLogger(__name__)

#: The HELLO is small; a first frame larger than this is refused early.
MAX_HELLO_FRAME = 256
_ZERO_ID = bytes(ID_SIZE)


def reject_reply(rejected: HandshakeRejected) -> bytes:
    """The REJECT frame that answers a refused handshake."""
    return encode(Reject(RejectReason(rejected.reason), rejected.text))


class HandshakeReader:
    """Reads the first frame of a server-side connection, which must be a HELLO.

    Raises FrameError for bytes that are not frames and ProtocolError for
    any other first frame, or anything sent before the answer.
    """

    def __init__(self) -> None:
        self._decoder = FrameDecoder(MAX_HELLO_FRAME)

    def receive_data(self, data: bytes) -> Hello | None:
        """Feed bytes; return the HELLO once it is complete."""
        frames = self._decoder.feed(data)
        if not frames:
            return None
        hello = frames[0]
        if not isinstance(hello, Hello):
            raise ProtocolError(f"the first frame must be HELLO, got {type(hello).__name__}")
        if len(frames) > 1 or self._decoder.buffered:
            raise ProtocolError("data sent before the handshake was answered")
        return hello


class ServerHandshake:
    """The server's side of a connection's handshake, before any session is touched.

    Without a pre-shared key it is the HELLO alone. With one, the HELLO must
    carry a client nonce; the server answers CHALLENGE (its nonce and proof,
    in :meth:`data_to_send`) and waits for the client's PROOF. Returns the
    HELLO once it may be acted on; raises HandshakeRejected (AUTH_FAILED)
    when the key is missing or wrong, FrameError or ProtocolError for bytes
    that break the protocol.
    """

    def __init__(self, psk: bytes | None, token_source: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self._psk = psk
        self._token = token_source
        self._reader = HandshakeReader()
        self._hello: Hello | None = None
        self._proof_decoder = FrameDecoder(MAX_HELLO_FRAME)
        self._server_nonce = b""
        self._output = b""

    def receive_data(self, data: bytes) -> Hello | None:
        """Feed bytes; return the HELLO once the handshake may proceed."""
        if self._hello is None:
            hello = self._reader.receive_data(data)
            if hello is None:
                return None
            if self._psk is None:
                if hello.auth_nonce is not None:
                    raise HandshakeRejected(RejectReason.AUTH_FAILED, "this server has no pre-shared key")
                return hello
            if hello.auth_nonce is None:
                raise HandshakeRejected(RejectReason.AUTH_FAILED, "this server requires the pre-shared key")
            self._hello = hello
            self._server_nonce = self._token(NONCE_SIZE)
            proof = auth.server_proof(self._psk, hello.auth_nonce, self._server_nonce)
            self._output += encode(Challenge(self._server_nonce, proof))
            return None
        frames = self._proof_decoder.feed(data)
        if not frames:
            return None
        if len(frames) > 1 or self._proof_decoder.buffered or not isinstance(frames[0], Proof):
            raise ProtocolError("expected exactly one PROOF after CHALLENGE")
        assert self._psk is not None and self._hello.auth_nonce is not None
        expected = auth.client_proof(self._psk, self._server_nonce, self._hello.auth_nonce, encode(self._hello))
        if not auth.proofs_match(expected, frames[0].proof):
            raise HandshakeRejected(RejectReason.AUTH_FAILED, "wrong pre-shared key")
        return self._hello

    def data_to_send(self) -> bytes:
        """Bytes to send now (the CHALLENGE)."""
        out, self._output = self._output, b""
        return out


@dataclass(frozen=True, slots=True)
class Attached:
    """A HELLO was accepted: ``engine`` is open on the new connection."""

    engine: SessionEngine
    is_new: bool


class SessionRegistry:
    """Every live session of a listener, by session id.

    ``token_source`` makes ids and secrets (tests pass a seeded one).
    """

    def __init__(
        self,
        config: SessionConfig,
        *,
        max_sessions: int = 1024,
        token_source: Callable[[int], bytes] = secrets.token_bytes,
        node_id: int = 0,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        if not 0 <= node_id <= MAX_NODE_ID:
            raise ValueError(f"node_id must be 0 (none) or 1..{MAX_NODE_ID}")
        #: Carried in the first two bytes of every session id this registry issues.
        self.node_id = node_id
        self.config = config
        self.max_sessions = max_sessions
        self._token = token_source
        self._sessions: dict[bytes, SessionEngine] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: bytes) -> SessionEngine | None:
        """The session with this id, if it is still registered."""
        return self._sessions.get(session_id)

    def handshake(self, hello: Hello, now: float) -> Attached:
        """Start or resume the session ``hello`` asks for, or raise HandshakeRejected.

        The threaded listener does the same in two steps under two locks:
        :meth:`start` under its own, :meth:`SessionEngine.resume` under the
        channel's.
        """
        if not hello.resume:
            return Attached(self.start(hello, now), True)
        engine = self._sessions.get(hello.session_id)
        if engine is None:
            raise self.unknown_session(hello)
        try:
            engine.resume(hello, self._token(ID_SIZE), now)
        finally:
            if engine.state in TERMINAL_STATES:
                del self._sessions[hello.session_id]
        return Attached(engine, False)

    def unknown_session(self, hello: Hello) -> HandshakeRejected:
        """The refusal of a resume this node holds no session for: NOT_HERE
        when the id names another node (a routing error, worth retrying),
        else SESSION_UNKNOWN, after the same work a wrong secret costs, so
        that an unknown id reveals nothing."""
        owner = node_id_of(hello.session_id)
        if self.node_id and owner and owner != self.node_id:
            return HandshakeRejected(RejectReason.NOT_HERE, f"session of node {owner}; this is node {self.node_id}")
        hmac.compare_digest(hello.secret, _ZERO_ID)
        return HandshakeRejected(RejectReason.SESSION_UNKNOWN, "no such session")

    def new_secret(self) -> bytes:
        """A fresh resume secret."""
        return self._token(ID_SIZE)

    def start(self, hello: Hello, now: float) -> SessionEngine:
        """A new session for a HELLO without RESUME, attached and registered."""
        if hello.resume or hello.session_id != _ZERO_ID or hello.secret != _ZERO_ID or hello.expect != 1:
            raise HandshakeRejected(
                RejectReason.PROTOCOL_ERROR, "a new-session HELLO carries a zero id and secret and expects 1"
            )
        # No reaping here: other sessions' engines belong to their own
        # shells (and locks); their timers end them.
        if len(self._sessions) >= self.max_sessions:
            raise HandshakeRejected(RejectReason.SERVER_BUSY, "too many sessions")
        session_id = self._new_id()
        while session_id in self._sessions or session_id == bytes(ID_SIZE):
            session_id = self._new_id()
        engine = SessionEngine(self.config, client=False, session_id=session_id)
        engine.attach(hello, self._token(ID_SIZE), now)
        self._sessions[session_id] = engine
        return engine

    def _new_id(self) -> bytes:
        token = self._token(ID_SIZE)
        if not self.node_id:
            return token
        return self.node_id.to_bytes(NODE_ID_SIZE, "big") + token[NODE_ID_SIZE:]

    def adopt(self, engine: SessionEngine) -> None:
        """Register a session restored from a journal after a restart."""
        if engine.session_id in self._sessions:
            raise ValueError("a session with that id is already registered")
        self._sessions[engine.session_id] = engine

    def remove(self, engine: SessionEngine) -> None:
        """Forget a session (it ended)."""
        if self._sessions.get(engine.session_id) is engine:
            del self._sessions[engine.session_id]

    def forget(self, session_id: bytes) -> None:
        """Forget the session with this id, if registered."""
        self._sessions.pop(session_id, None)
