"""Two pure engines joined by an in-memory link with a virtual clock.

The link can deliver any number of bytes in either direction, stall (by
not delivering), or cut the connection, losing what was in flight. It keeps
the records the invariants need: what each side sent, what the other
delivered, what was acknowledged, and what an ended session reported.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from reliable_tcp.core import events as ev
from reliable_tcp.core.config import SessionConfig
from reliable_tcp.core.engine import SessionEngine
from reliable_tcp.core.frames import Data, FrameDecoder
from reliable_tcp.exceptions import HandshakeRejected
from reliable_tcp.core.handshake import ServerHandshake, SessionRegistry, reject_reply
from reliable_tcp.core.state import TERMINAL_STATES, SessionState


@dataclass
class SideRecord:
    """What one side did and saw."""

    sent: list[bytes] = field(default_factory=list)
    delivered: list[bytes] = field(default_factory=list)
    acked: int = 0  # highest cumulative ack seen for this side's messages
    ended: ev.Event | None = None  # SessionClosed or SessionLost
    peer_closed: bool = False
    handshakes: int = 0
    transport_failures: int = 0
    crashes: int = 0
    # Every seq this side put in a DATA frame, with the ack level at the time.
    data_sent_after_ack: list[tuple[int, int]] = field(default_factory=list)


class EnginePair:
    """A client engine and a registry-backed server engine over one in-memory link."""

    def __init__(self, config: SessionConfig, seed: int = 0, server_config: SessionConfig | None = None) -> None:
        rng = random.Random(seed)
        self._rng = rng
        self.config = config
        self.now = 0.0
        self.server_config = server_config or config
        self.registry = SessionRegistry(self.server_config, token_source=rng.randbytes)
        self.client = SessionEngine(config, client=True, token_source=rng.randbytes)
        self.server: SessionEngine | None = None
        self.records = {"client": SideRecord(), "server": SideRecord()}
        self.to_server = bytearray()
        self.to_client = bytearray()
        self.connected = False
        self.orphans: list[tuple[SessionEngine, SideRecord]] = []
        self._reader: ServerHandshake | None = None
        self._server_on_link = False
        # Each side's output is decoded with the *receiver's* frame limit, so a
        # frame the receiver would refuse fails the test where it was sent.
        self._sniff = self._sniffers()

    # --------------------------------------------------------------- helpers

    def _sniffers(self) -> dict[str, FrameDecoder]:
        return {
            "client": FrameDecoder(self.server_config.max_frame_size),
            "server": FrameDecoder(self.config.max_frame_size),
        }

    def engine(self, side: str) -> SessionEngine | None:
        return self.client if side == "client" else self.server

    def record(self, side: str) -> SideRecord:
        return self.records[side]

    def _collect(self) -> None:
        sides = [("client", self.client, self.records["client"]), ("server", self.server, self.records["server"])]
        sides += [("orphan", engine, rec) for engine, rec in self.orphans]
        for side, engine, rec in sides:
            if engine is None:
                continue
            for event in engine.events_received():
                if isinstance(event, ev.MessagesReceived):
                    assert event.first_seq == len(rec.delivered) + 1, (side, event.first_seq, len(rec.delivered))
                    rec.delivered.extend(event.messages)
                elif isinstance(event, ev.MessagesAcknowledged):
                    assert event.ack > rec.acked, "acks only move forward"
                    rec.acked = event.ack
                elif isinstance(event, ev.HandshakeCompleted):
                    rec.handshakes += 1
                elif isinstance(event, ev.TransportFailed):
                    rec.transport_failures += 1
                    self.cut()
                elif isinstance(event, ev.PeerClosed):
                    rec.peer_closed = True
                elif isinstance(event, (ev.SessionClosed, ev.SessionFailed)):
                    assert rec.ended is None, f"{side} ended twice"
                    rec.ended = event
        if self.server is not None and self.server.state in TERMINAL_STATES:
            self.registry.remove(self.server)

    def _pump(self) -> None:
        """Move what each engine wants to send onto the link, sniffing DATA."""
        for side, buffer in (("client", self.to_server), ("server", self.to_client)):
            engine = self.engine(side)
            if engine is None or (side == "server" and not self._server_on_link):
                continue
            out = engine.data_to_send(self.now)
            if not out or not self.connected:
                continue
            buffer += out
            rec = self.records[side]
            for frame in self._sniff[side].feed(out):
                if isinstance(frame, Data):
                    rec.data_sent_after_ack.append((frame.first_seq, rec.acked))

    def step(self) -> None:
        self._collect()
        self._pump()
        self._collect()

    # ------------------------------------------------------------ operations

    def connect(self) -> None:
        """Client opens a new connection (only when it has none)."""
        assert not self.connected
        self.connected = True
        self.to_server.clear()
        self.to_client.clear()
        self._reader = ServerHandshake(self.config.psk, self._rng.randbytes)
        self._server_on_link = False
        self._sniff = self._sniffers()
        self.client.connection_made(self.now)
        self.step()

    def cut(self) -> None:
        """The connection dies: bytes in flight are lost, both sides learn of it."""
        if not self.connected:
            return
        self.connected = False
        self.to_server.clear()
        self.to_client.clear()
        self.client.transport_lost(self.now)
        if self.server is not None and self._server_on_link:
            self.server.transport_lost(self.now)
        self._server_on_link = False
        self._collect()

    def deliver_to_server(self, count: int) -> None:
        chunk = bytes(self.to_server[:count])
        del self.to_server[:count]
        if not chunk:
            return
        if not self._server_on_link:
            assert self._reader is not None
            try:
                hello = self._reader.receive_data(chunk)
            except HandshakeRejected as rejected:
                self.to_client += reject_reply(rejected)
                self.step()
                return
            self.to_client += self._reader.data_to_send()  # the CHALLENGE, with a pre-shared key
            if hello is None:
                self.step()
                return
            try:
                attached = self.registry.handshake(hello, self.now)
            except HandshakeRejected as rejected:
                self.to_client += reject_reply(rejected)
                return
            if attached.is_new and self.server is not None:
                # The client never saw the ACCEPT of the previous session, so
                # it asked for a new one; the old one is an orphan that must
                # end by itself and report what it could not deliver.
                assert self.records["server"].delivered == []
                self.orphans.append((self.server, self.records["server"]))
                self.records["server"] = SideRecord()
            self.server = attached.engine
            self._server_on_link = True
        else:
            assert self.server is not None
            self.server.receive_data(chunk, self.now)
        self.step()

    def deliver_to_client(self, count: int) -> None:
        chunk = bytes(self.to_client[:count])
        del self.to_client[:count]
        if chunk:
            self.client.receive_data(chunk, self.now)
        self.step()

    def send(self, side: str, payload: bytes) -> int | None:
        engine = self.engine(side)
        if engine is None or not engine.can_send(len(payload)):
            return None
        seq = engine.send_message(payload, self.now)
        rec = self.records[side]
        rec.sent.append(payload)
        assert seq == len(rec.sent)
        self.step()
        return seq

    def send_batch(self, side: str, payloads: list[bytes]) -> int:
        """Queue what fits of ``payloads`` in one call; return how many."""
        engine = self.engine(side)
        if engine is None:
            return 0
        first, count = engine.send_messages(payloads, self.now)
        rec = self.records[side]
        assert first == len(rec.sent) + 1
        rec.sent.extend(payloads[:count])
        self.step()
        return count

    def commit(self, side: str, upto: int) -> None:
        """The application of ``side`` is done with its first ``upto`` deliveries."""
        engine = self.engine(side)
        if engine is None or engine.state in TERMINAL_STATES:
            return
        engine.commit(min(upto, len(self.records[side].delivered)), self.now)
        self.step()

    def crash_client(self) -> None:
        """The client process dies and restarts from what a journal would hold:
        its session, every unacknowledged message, and what it committed.
        Deliveries it had not committed are forgotten (and will come again)."""
        client = self.client
        self.cut()
        rec = self.records["client"]
        rec.crashes += 1
        unacked = list(client.unacked())
        self.client = SessionEngine.restore(
            self.config,
            session_id=client.session_id,
            secret=client.secret,
            unacked=unacked,
            next_seq=client.next_seq,
            committed=client.committed,
            now=self.now,
            token_source=self._rng.randbytes,
        )
        del rec.delivered[client.committed :]
        self._sniff["client"] = self._sniffers()["client"]

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for engine in (self.client, self.server):
            if engine is not None:
                engine.handle_timer(self.now)
        self.reap()
        self.step()

    def reap(self, now: float | None = None) -> None:
        """What the shell's timers do for detached server sessions: fire
        them, and forget the ones that ended."""
        now = self.now if now is None else now
        for engine in [self.server, *(orphan for orphan, _ in self.orphans)]:
            if engine is not None and engine.state is SessionState.DETACHED:
                engine.handle_timer(now)
            if engine is not None and engine.state in TERMINAL_STATES:
                self.registry.remove(engine)

    def expire_orphans(self) -> None:
        """Let every orphaned server session reach its resume-window verdict."""
        for engine, _ in self.orphans:
            engine.handle_timer(self.now + self.config.resume_window + 1)
        self._collect()

    def settle(self, max_rounds: int = 200) -> None:
        """Run a healthy link until nothing changes: reconnect, deliver all, let acks fire."""
        for _ in range(max_rounds):
            if self.client.state in TERMINAL_STATES:
                # The server side may still wait for its dead verdict.
                self.now += self.config.dead_after_seconds + self.config.resume_window
                if self.server is not None:
                    self.server.handle_timer(self.now)
                self.reap()
                self.step()
                if self.server is None or self.server.state in TERMINAL_STATES:
                    return
                continue
            if self.config.ack_on_commit:
                for side in ("client", "server"):
                    engine = self.engine(side)
                    if engine is not None and engine.state not in TERMINAL_STATES:
                        engine.commit(len(self.records[side].delivered), self.now)
            if not self.connected:
                self.connect()
            if self.to_server or self.to_client:
                self.deliver_to_server(len(self.to_server))
                self.deliver_to_client(len(self.to_client))
                continue
            if self.client.has_output() or (self.server is not None and self._server_on_link and self.server.has_output()):
                self.step()
                continue
            quiet = (
                self.client.unacked_count == 0
                and (self.server is None or self.server.unacked_count == 0)
                and self.client.state is SessionState.OPEN
            )
            if quiet:
                # One ack delay more, so delayed acks go out, then stop.
                self.advance(self.config.ack_delay)
                if not (self.to_server or self.to_client):
                    return
                continue
            self.advance(self.config.ack_delay)
        raise AssertionError("the pair did not settle")
