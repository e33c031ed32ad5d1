"""Conformance vectors: byte transcripts that pin the wire protocol (docs/vectors/).

The vectors are produced by this module from the reference codec and the
pure engines, with deterministic "random" tokens, and the test suite checks
that the stored files equal what the code produces now, so they can't drift
from the implementation. Another implementation uses the files alone (see
docs/vectors/README.md)::

    python -m reliable_tcp.testing.conformance write docs/vectors   # regenerate
    python -m reliable_tcp.testing.conformance check docs/vectors   # compare (exit 1 if different)
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core import frames as f
from ..core.config import SessionConfig
from ..core.engine import SessionEngine
from ..core.handshake import ServerHandshake, SessionRegistry, reject_reply
from ..exceptions import CorruptFrame, FrameError, FrameTooLarge, HandshakeRejected, UnsupportedVersion

__all__ = ["frame_vectors", "bad_frame_vectors", "handshake_vectors", "replay_client", "client_playable", "write",
           "check"]

#: The pre-shared key of the key-exchange transcripts (32 bytes).
PSK = bytes(range(0xA0, 0xC0))


class Tokens:
    """Deterministic stand-ins for the random tokens (ids, secrets, nonces):
    the k-th token of length n is the bytes ``base + k`` repeated n times,
    so a transcript shows at a glance which token went where."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.count = 0
        self.given: list[str] = []

    def __call__(self, size: int) -> bytes:
        token = bytes([(self.base + self.count) % 256]) * size
        self.count += 1
        self.given.append(token.hex())
        return token


def describe(frame: f.Frame) -> dict[str, Any]:
    """A frame's fields as JSON values (bytes as hex, enums by name)."""
    fields: dict[str, Any] = {"type": _TYPE_NAMES[type(frame)]}
    for field in dataclasses.fields(frame):
        value = getattr(frame, field.name)
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, f.RejectReason):
            value = value.name
        elif isinstance(value, tuple):
            value = [m.hex() for m in value]
        fields[field.name] = value
    return fields


_TYPE_NAMES = {
    f.Hello: "HELLO", f.Accept: "ACCEPT", f.Reject: "REJECT", f.Data: "DATA", f.Ack: "ACK", f.Ping: "PING",
    f.Pong: "PONG", f.Close: "CLOSE", f.CloseAck: "CLOSE_ACK", f.Challenge: "CHALLENGE", f.Proof: "PROOF",
}


# ----------------------------------------------------------------- frames

_ID, _SECRET, _NONCE, _MAC = bytes(range(16)), bytes(range(16, 32)), bytes(range(32, 48)), bytes(range(48, 80))

_FRAMES: list[tuple[str, f.Frame]] = [
    ("hello new session", f.Hello(False, bytes(16), bytes(16), 1)),
    ("hello resume", f.Hello(True, _ID, _SECRET, 42)),
    ("hello with the key exchange", f.Hello(False, bytes(16), bytes(16), 1, _NONCE)),
    ("hello announcing a 64 KiB message limit", f.Hello(False, bytes(16), bytes(16), 1, None, 65536)),
    ("hello with key exchange and limit", f.Hello(True, _ID, _SECRET, 7, _NONCE, 1000)),
    ("accept new session", f.Accept(False, _ID, _SECRET, 1)),
    ("accept resume announcing a limit", f.Accept(True, _ID, _SECRET, 43, 65536)),
    ("hello asking for the quiet heartbeat", f.Hello(False, bytes(16), bytes(16), 1, None, None, True)),
    ("accept agreeing to the quiet heartbeat", f.Accept(False, _ID, _SECRET, 1, None, True)),
    ("challenge", f.Challenge(_NONCE, _MAC)),
    ("proof", f.Proof(_MAC)),
    ("reject with text", f.Reject(f.RejectReason.SESSION_UNKNOWN, "no such session")),
    ("reject without text", f.Reject(f.RejectReason.ABORTED, "")),
    ("reject SERVER_BUSY with a retry hint",
     f.Reject(f.RejectReason.SERVER_BUSY, f.with_retry_after(5.0, "the server is restarting"))),
    ("data, one message", f.Data(1, 0, (b"hello",))),
    ("data, a run with a piggybacked ack", f.Data(5, 3, (b"a", b"", b"ccc"))),
    ("data, an empty message", f.Data(9, 0, (b"",))),
    ("ack", f.Ack(2**40 + 5)),
    ("ping", f.Ping(1234567890)),
    ("pong", f.Pong(1234567890)),
    ("close", f.Close(17)),
    ("close_ack", f.CloseAck(12)),
]


def frame_vectors() -> list[dict[str, Any]]:
    """Every frame type encoded: its bytes and its fields."""
    return [{"name": name, "hex": f.encode(frame).hex(), "frame": describe(frame)} for name, frame in _FRAMES]


def _with_crc(header_and_body: bytes) -> bytes:
    """A frame from its 8 header bytes and body, with a correct CRC."""
    import zlib

    header, body = header_and_body[:8], header_and_body[8:]
    return header + zlib.crc32(body, zlib.crc32(header)).to_bytes(4, "big") + body


def _head(frame_type: int, length: int, version: int = f.PROTOCOL_VERSION) -> bytes:
    return f.MAGIC + bytes([version, frame_type]) + length.to_bytes(4, "big")


_LIMIT = f.max_frame_body(f.DEFAULT_MAX_MESSAGE_SIZE)


def _flipped(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


_BAD: list[tuple[str, bytes, str]] = [
    ("bad magic", b"GET / HTTP/1.1\r\n", "corrupt"),
    ("a TLS ClientHello", bytes.fromhex("160301020001000200"), "corrupt"),
    ("checksum mismatch (a bit flipped in the body)", _flipped(f.encode(f.Ack(5)), 15), "corrupt"),
    ("checksum mismatch (a bit flipped in the type)", _flipped(f.encode(f.Ack(5)), 3), "corrupt"),
    ("version 2", _with_crc(_head(f.FrameType.ACK, 8, version=2) + bytes(8)), "unsupported_version"),
    ("length above the default limit", _head(f.FrameType.DATA, _LIMIT + 1), "too_large"),
    ("unknown type 0x63", _with_crc(_head(0x63, 0)), "malformed"),
    ("ACK body of 7 bytes", _with_crc(_head(f.FrameType.ACK, 7) + bytes(7)), "malformed"),
    ("HELLO with an unknown flag", _with_crc(_head(f.FrameType.HELLO, 41) + b"\x10" + bytes(40)), "malformed"),
    ("ACCEPT with the AUTH flag (HELLO only)", _with_crc(_head(f.FrameType.ACCEPT, 57) + b"\x02" + bytes(56)), "malformed"),
    ("HELLO announcing a limit of 0", _with_crc(_head(f.FrameType.HELLO, 45) + b"\x04" + bytes(44)), "malformed"),
    ("DATA with no messages", _with_crc(_head(f.FrameType.DATA, 20) + bytes(20)), "malformed"),
    ("DATA with first_seq 0", _with_crc(_head(f.FrameType.DATA, 25) + bytes(16) + b"\0\0\0\1" + bytes(4) + b"x"), "malformed"),
    ("DATA whose message runs past its frame",
     _with_crc(_head(f.FrameType.DATA, 25) + (1).to_bytes(8, "big") + bytes(8) + b"\0\0\0\1" + b"\0\0\0\x09" + b"x"),
     "malformed"),
    ("DATA with a stray byte after its last message",
     _with_crc(_head(f.FrameType.DATA, 26) + (1).to_bytes(8, "big") + bytes(8) + b"\0\0\0\1" + b"\0\0\0\1" + b"xy"),
     "malformed"),
    ("REJECT with an unknown reason", _with_crc(_head(f.FrameType.REJECT, 1) + b"\x63"), "malformed"),
    ("REJECT text longer than 512 bytes", _with_crc(_head(f.FrameType.REJECT, 514) + b"\x01" + b"x" * 513), "malformed"),
    ("REJECT text that is not UTF-8", _with_crc(_head(f.FrameType.REJECT, 2) + b"\x01\xff"), "malformed"),
]

_VERDICTS: dict[str, type[FrameError]] = {
    "corrupt": CorruptFrame,
    "too_large": FrameTooLarge,
    "unsupported_version": UnsupportedVersion,
    "malformed": FrameError,
}


def verdict_of(data: bytes, limit: int = _LIMIT) -> str:
    """What the reference decoder says of ``data``: a verdict name, or "ok"."""
    try:
        f.FrameDecoder(limit).feed(data)
    except CorruptFrame:
        return "corrupt"
    except FrameTooLarge:
        return "too_large"
    except UnsupportedVersion:
        return "unsupported_version"
    except FrameError:
        return "malformed"
    return "ok"


def bad_frame_vectors() -> list[dict[str, Any]]:
    """Bytes that are not valid frames, and the verdict each must get."""
    return [{"name": name, "hex": data.hex(), "verdict": verdict, "limit": _LIMIT} for name, data, verdict in _BAD]


# ------------------------------------------------------------- handshakes


class Transcript:
    """A client engine and a server (handshake reader, registry, engine)
    joined by a recorded in-memory link with a virtual clock."""

    def __init__(self, config: SessionConfig, *, server_config: SessionConfig | None = None) -> None:
        self.config = config
        self.server_config = server_config or config
        self.now = 0.0
        self.client_tokens = Tokens(0xC0)
        self.server_tokens = Tokens(0x50)
        self.registry = SessionRegistry(self.server_config, token_source=self.server_tokens)
        self.client = SessionEngine(config, client=True, token_source=self.client_tokens)
        self.server: SessionEngine | None = None
        self.steps: list[dict[str, Any]] = []
        #: The server's node id when the transcript starts (None: none).
        self.node_id: int | None = None
        #: The server's session limit matters to this transcript.
        self.limited = False
        self._handshake: ServerHandshake | None = None
        self._pending = {"client": b"", "server": b""}

    def note(self, text: str, **structured: Any) -> None:
        self.steps.append({"note": text, **structured})

    def connect(self) -> None:
        """A new connection: the client's HELLO is queued."""
        self.steps.append({"event": "connected"})
        self._handshake = ServerHandshake(self.server_config.psk, self.server_tokens)
        self._pending = {"client": b"", "server": b""}
        self.client.connection_made(self.now)
        self._take("client")

    def call(self, side: str, name: str, message: bytes | None = None) -> None:
        """The application on ``side`` calls send(message), close() or abort()."""
        engine = self.client if side == "client" else self.server
        assert engine is not None
        step: dict[str, Any] = {"call": name, "side": side}
        if message is not None:
            step["message"] = message.hex()
        _perform(engine, step, self.now)
        self.steps.append(step)

    def cut(self, note: str) -> None:
        """The connection dies; what was in flight is lost."""
        self.note(note, event="disconnected")
        self._pending = {"client": b"", "server": b""}
        self.client.transport_lost(self.now)
        if self.server is not None and self._handshake is None:
            self.server.transport_lost(self.now)

    def advance(self, seconds: float) -> None:
        self.steps.append({"advance": seconds})
        self.now += seconds
        self.client.handle_timer(self.now)
        if self.server is not None:
            self.server.handle_timer(self.now)
        self._take("client")
        self._take("server")

    def _take(self, side: str) -> None:
        engine = self.client if side == "client" else (self.server if self._handshake is None else None)
        if engine is not None:
            self._pending[side] += engine.data_to_send(self.now)

    def deliver(self, side: str, *, lose: bool = False) -> None:
        """Everything ``side`` has sent so far reaches the other side (or is lost)."""
        self._take(side)
        data, self._pending[side] = self._pending[side], b""
        if not data:
            return
        step: dict[str, Any] = {"from": side, "hex": data.hex(), "frames": [describe(x) for x in f.FrameDecoder(1 << 24).feed(data)]}
        if lose:
            step["lost"] = True
        self.steps.append(step)
        if lose:
            return
        if side == "server":
            self.client.receive_data(data, self.now)
            self._take("client")
            return
        if self._handshake is not None:
            try:
                hello = self._handshake.receive_data(data)
            except HandshakeRejected as rejected:
                self._pending["server"] += reject_reply(rejected)
                return
            self._pending["server"] += self._handshake.data_to_send()
            if hello is None:
                return
            try:
                attached = self.registry.handshake(hello, self.now)
            except HandshakeRejected as rejected:
                self._pending["server"] += reject_reply(rejected)
                return
            self.server = attached.engine
            self._handshake = None
        else:
            assert self.server is not None
            self.server.receive_data(data, self.now)
        self._take("server")

    def inject(self, side: str, data: bytes, note: str) -> None:
        """Bytes ``side`` sends that its engine would not (a broken peer)."""
        self.note(f"injected: {note}")
        self._pending[side] += data

    def replace_pending(self, side: str) -> bytes:
        """Take back what ``side`` queued and has not delivered yet."""
        self._take(side)
        data, self._pending[side] = self._pending[side], b""
        return data

    def exchange(self, rounds: int = 3) -> None:
        for _ in range(rounds):
            self.deliver("client")
            self.deliver("server")

    def result(self, name: str, meaning: str) -> dict[str, Any]:
        return {
            "name": name,
            "meaning": meaning,
            "config": {
                "client_max_message_size": self.config.max_message_size,
                "server_max_message_size": self.server_config.max_message_size,
                "psk": self.config.psk.hex() if self.config.psk else None,
                "server_psk": self.server_config.psk.hex() if self.server_config.psk else None,
                "server_node_id": self.node_id,
                "server_max_sessions": self.registry.max_sessions if self.limited else None,
                "heartbeat_interval": self.config.heartbeat_interval,
                "ack_delay": self.config.ack_delay,
                "client_quiet_heartbeat": self.config.quiet_heartbeat,
                "server_quiet_heartbeat": self.server_config.quiet_heartbeat,
            },
            "client_tokens": self.client_tokens.given,
            "server_tokens": self.server_tokens.given,
            "steps": self.steps,
            "client_state": self.client.state.value,
            "server_state": self.server.state.value if self.server is not None else None,
        }


#: The transcripts' settings; without the quiet heartbeat, so that every
#: transcript but the two about it shows the exchanges of the first edition.
_CONFIG = SessionConfig(heartbeat_interval=1.0, ack_delay=0.0, quiet_heartbeat=False)


def _new_session() -> dict[str, Any]:
    t = Transcript(_CONFIG)
    t.connect()
    t.exchange()
    t.call("client", "send", b"first")
    t.exchange()
    t.advance(_CONFIG.heartbeat_interval)
    t.exchange()
    return t.result("new session", "HELLO (zero id and secret, expect 1), ACCEPT with the new id and secret, "
                    "the client's confirming ACK at once, then a message and its acknowledgement; after a quiet "
                    "heartbeat interval each side sends PING (token: its clock in microseconds) and gets PONG")


def _resume() -> dict[str, Any]:
    t = Transcript(_CONFIG)
    t.connect()
    t.exchange()
    t.call("client", "send", b"m1")
    t.call("client", "send", b"m2")
    t.deliver("client", lose=True)
    t.cut("the connection breaks with both messages in flight")
    t.connect()
    t.exchange()
    return t.result("resume with secret rotation", "HELLO with RESUME, the id and the secret from the last ACCEPT, "
                    "expect = next expected seq; ACCEPT with a new secret; the client replays m1 and m2")


def _lost_accept() -> dict[str, Any]:
    t = Transcript(_CONFIG)
    t.connect()
    t.exchange()
    t.cut("the connection breaks")
    t.connect()
    t.deliver("client")
    t.deliver("server", lose=True)
    t.cut("the ACCEPT of the resume is lost: the client never learns the rotated secret")
    t.connect()
    t.exchange()
    return t.result("lost ACCEPT, then resume with the previous secret",
                    "the server accepts the secret the client presented last until the client has spoken after an ACCEPT")


def _psk() -> dict[str, Any]:
    t = Transcript(dataclasses.replace(_CONFIG, psk=PSK))
    t.connect()
    t.exchange()
    return t.result("pre-shared key challenge and proof",
                    "HELLO with AUTH and the client nonce; CHALLENGE with the server nonce and HMAC-SHA256(K, 'rtcp-v1 server' "
                    "| Nc | Ns); PROOF = HMAC-SHA256(K, 'rtcp-v1 client' | Ns | Nc | HELLO frame); then ACCEPT")


def _limits() -> dict[str, Any]:
    small = dataclasses.replace(_CONFIG, max_message_size=1000, window_bytes=1 << 20)
    t = Transcript(_CONFIG, server_config=small)
    t.connect()
    t.exchange()
    t.call("client", "send", b"x" * 1000)  # the largest the server takes; 1001 bytes would be refused at send()
    t.exchange()
    return t.result("announced limit", "the server announces max_message_size 1000 (LIMITS flag) in its ACCEPT; the "
                    "client, at the default, announces nothing; from then on the client sends nothing larger than 1000 "
                    "bytes, in DATA frames of at most max(1000, 262144) + 24 body bytes")


def _quiet() -> dict[str, Any]:
    quiet = dataclasses.replace(_CONFIG, quiet_heartbeat=True)
    t = Transcript(quiet)
    t.connect()
    t.exchange()
    t.advance(quiet.heartbeat_interval)
    t.exchange()
    t.advance(quiet.heartbeat_interval)
    t.exchange()
    t.advance(quiet.heartbeat_interval)
    t.exchange()
    return t.result("quiet heartbeat", "HELLO and ACCEPT both carry QUIET (flag 0x08); after one quiet interval "
                    "nobody PINGs; after dead_after minus one interval (2 s: dead_after is 3 intervals) the client "
                    "PINGs and the server answers; the server does not PING while it hears the client's PINGs "
                    "(protocol.md 6.1)")


def _quiet_refused() -> dict[str, Any]:
    t = Transcript(dataclasses.replace(_CONFIG, quiet_heartbeat=True), server_config=_CONFIG)
    t.connect()
    t.deliver("client", lose=True)
    t.note("a server of the first edition reads flag 0x08 as an unknown flag")
    t.inject("server", f.encode(f.Reject(f.RejectReason.PROTOCOL_ERROR, "HELLO: unknown flags 0x08")),
             "the first-edition server's answer (this reference would accept the flag)")
    t.deliver("server")
    t.cut("the server closes after its REJECT")
    t.connect()
    t.exchange()
    return t.result("quiet heartbeat refused by an older server", "REJECT PROTOCOL_ERROR answers a HELLO with QUIET: "
                    "the client does not end the session; it connects again and sends the same HELLO without QUIET, "
                    "and does not ask again in this session")


def _close() -> dict[str, Any]:
    t = Transcript(_CONFIG)
    t.connect()
    t.exchange()
    assert t.server is not None
    t.call("server", "send", b"in flight toward the closer")
    t.call("client", "close")  # the two cross on the wire
    t.deliver("server")
    t.exchange(3)
    return t.result("close", "the client sends CLOSE while the server's message is on its way; the server answers "
                    "with CLOSE_ACK and its own CLOSE; the client delivers the message, answers CLOSE_ACK covering it: "
                    "both sides end with nothing unacknowledged")


def _simultaneous_close() -> dict[str, Any]:
    t = Transcript(_CONFIG)
    t.connect()
    t.exchange()
    assert t.server is not None
    t.call("client", "close")
    t.call("server", "close")
    t.exchange(3)
    return t.result("simultaneous close", "both send CLOSE at once; each answers the other's with CLOSE_ACK")


def _reject(name: str, meaning: str, build: Callable[[], Transcript]) -> dict[str, Any]:
    t = build()
    return t.result(name, meaning)


def _rejects() -> list[dict[str, Any]]:
    def unknown() -> Transcript:
        t = Transcript(_CONFIG)
        t.connect()
        t.exchange()
        t.cut("the connection breaks")
        assert t.server is not None
        t.server.handle_timer(t.now + _CONFIG.resume_window)
        t.registry.remove(t.server)
        t.note("the server's resume window expires: it forgets the session", event="server_forgot_session")
        t.connect()
        t.exchange()
        return t

    def busy() -> Transcript:
        t = Transcript(_CONFIG)
        t.registry.max_sessions = 1
        t.connect()
        t.exchange()
        other = Transcript(_CONFIG)
        other.registry = t.registry
        other.server_tokens = t.server_tokens
        other.limited = True
        other.note("the server already holds one session (another client's), its limit (server_max_sessions)")
        other.connect()
        other.exchange()
        return other

    def auth() -> Transcript:
        t = Transcript(_CONFIG, server_config=dataclasses.replace(_CONFIG, psk=PSK))
        t.connect()
        t.exchange()
        return t

    def protocol() -> Transcript:
        t = Transcript(_CONFIG)
        t.connect()
        t.exchange()
        t.inject("client", f.encode(f.Ack(99)), "an ACK for a message the server never sent")
        t.exchange()
        return t

    def bad_sequence() -> Transcript:
        t = Transcript(_CONFIG)
        t.connect()
        t.exchange()
        t.cut("the connection breaks")
        t.connect()
        hello = f.FrameDecoder(1024).feed(t.replace_pending("client"))[0]
        assert isinstance(hello, f.Hello)
        t.inject("client", f.encode(dataclasses.replace(hello, expect=5)),
                 "a resume claiming message 5, although the server sent none")
        t.exchange()
        return t

    def aborted() -> Transcript:
        t = Transcript(_CONFIG)
        t.connect()
        t.exchange()
        assert t.server is not None
        t.call("server", "send", b"never delivered")
        t.deliver("server", lose=True)
        t.call("client", "abort")
        t.exchange()
        return t

    def not_here() -> Transcript:
        t = Transcript(_CONFIG)
        t.registry.node_id = t.node_id = 1
        t.connect()
        t.exchange()
        t.cut("the connection breaks")
        t.registry = SessionRegistry(t.server_config, token_source=t.server_tokens, node_id=2)
        t.note("the resume reaches node 2; the session id's first two bytes name node 1", event="server_replaced",
               server_node_id=2)
        t.connect()
        t.exchange()
        return t

    return [
        _reject("reject NOT_HERE", "a resume reaches another node than the one that issued the session: only this "
                "attempt is refused, the client retries", not_here),
        _reject("reject SESSION_UNKNOWN", "a resume of a session the server no longer holds: the client's session is lost",
                unknown),
        _reject("reject SERVER_BUSY", "a new session at the server's limit: only this attempt is refused", busy),
        _reject("reject AUTH_FAILED", "a HELLO without the key exchange to a server that requires it", auth),
        _reject("reject PROTOCOL_ERROR", "a frame that breaks a rule ends the session on both sides", protocol),
        _reject("reject BAD_SEQUENCE", "an impossible resume claim ends the session on both sides", bad_sequence),
        _reject("reject ABORTED", "the client's application aborts: the server's session ends at once", aborted),
    ]


def handshake_vectors() -> list[dict[str, Any]]:
    """Transcripts of handshakes, resumes, closes and refusals."""
    return [
        _new_session(), _resume(), _lost_accept(), _psk(), _limits(), _quiet(), _quiet_refused(), _close(),
        _simultaneous_close(), *_rejects(),
    ]


# ------------------------------------------------------------- replaying


def replay_client(transcript: dict[str, Any]) -> list[str]:
    """Play the client's role of a stored transcript from its JSON alone,
    as another implementation would (docs/vectors/README.md): a fresh
    engine, the transcript's config and tokens, the server's steps fed in,
    the application's calls, the clock's advances and the connection
    events applied. Returns the differences between what it writes and the
    transcript's client steps (empty: it matches byte for byte). A
    transcript with bytes injected on the client's side is not playable
    from this role (no correct client writes them): ValueError."""
    steps = transcript["steps"]
    if not client_playable(transcript):
        raise ValueError(f"{transcript['name']}: the client's bytes are injected, not a correct client's")
    config = transcript["config"]
    tokens = iter(transcript["client_tokens"])
    engine = SessionEngine(
        SessionConfig(
            heartbeat_interval=config["heartbeat_interval"],
            ack_delay=config["ack_delay"],
            max_message_size=config["client_max_message_size"],
            quiet_heartbeat=config["client_quiet_heartbeat"],
            psk=bytes.fromhex(config["psk"]) if config["psk"] else None,
        ),
        client=True,
        token_source=lambda size: bytes.fromhex(next(tokens)),
    )
    # What the client writes is taken when the transcript's recorder took
    # it: after a connect, a clock advance, or bytes from the server, and
    # when the client's step goes out (so that sends made together leave
    # together, as one DATA frame may carry several messages).
    now, written, differences = 0.0, b"", []
    for number, step in enumerate(steps):
        event = step.get("event")
        if event == "connected":
            engine.connection_made(now)
            written = engine.data_to_send(now)
        elif event == "disconnected":
            written = b""
            engine.transport_lost(now)
        elif "advance" in step:
            now += step["advance"]
            engine.handle_timer(now)
            written += engine.data_to_send(now)
        elif step.get("side") == "client" and "call" in step:
            _perform(engine, step, now)
        elif step.get("from") == "server" and not step.get("lost"):
            engine.receive_data(bytes.fromhex(step["hex"]), now)
            written += engine.data_to_send(now)
        elif step.get("from") == "client":
            written += engine.data_to_send(now)
            if written.hex() != step["hex"]:
                differences.append(f"step {number}: wrote {written.hex()}, the transcript has {step['hex']}")
            written = b""
    if engine.state.value != transcript["client_state"]:
        differences.append(f"ended {engine.state.value}, the transcript has {transcript['client_state']}")
    return differences


def _perform(engine: SessionEngine, step: dict[str, Any], now: float) -> None:
    """An application call step: ``send`` (its ``message``), ``close`` or ``abort``."""
    if step["call"] == "send":
        engine.send_message(bytes.fromhex(step["message"]), now)
    elif step["call"] == "close":
        engine.close(now)
    else:
        engine.abort(now)


def client_playable(transcript: dict[str, Any]) -> bool:
    """No bytes are injected on the client's side (see :func:`replay_client`)."""
    steps = transcript["steps"]
    return not any(step.get("note", "").startswith("injected:") and _next_writer(steps, i) == "client"
                   for i, step in enumerate(steps))


def _next_writer(steps: list[dict[str, Any]], index: int) -> str | None:
    for step in steps[index + 1 :]:
        if "from" in step:
            return str(step["from"])
    return None


# ----------------------------------------------------------------- files

FILES: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "frames.json": frame_vectors,
    "bad-frames.json": bad_frame_vectors,
    "transcripts.json": handshake_vectors,
}


def _render(build: Callable[[], list[dict[str, Any]]]) -> str:
    return json.dumps(build(), indent=1) + "\n"


def write(directory: str) -> None:
    """Write every vector file into ``directory``."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for name, build in FILES.items():
        (path / name).write_text(_render(build))


def check(directory: str) -> list[str]:
    """The vector files in ``directory`` that differ from what the code produces."""
    path = Path(directory)
    return [name for name, build in FILES.items() if not (path / name).exists() or (path / name).read_text() != _render(build)]


if __name__ == "__main__":  # pragma: no cover - a maintenance command
    command, target = (sys.argv[1:3] + ["docs/vectors"])[:2] if len(sys.argv) > 1 else ("check", "docs/vectors")
    if command == "write":
        write(target)
    else:
        stale = check(target)
        if stale:
            sys.stderr.write(f"stale vectors: {', '.join(stale)}\n")
            sys.exit(1)
