"""The shared session policy under random operations, byte-free.

Two SessionPolicy objects (a client, and the server sessions a registry
starts) are joined by an in-memory connection that hypothesis sends,
delivers in pieces, cuts and lets time pass on, as the engine model test
does for bare engines. Every action the policies return is carried out as
a front would, and the promise is checked after every step: each side
receives exactly once and in order what the other sent; a session ends at
most once, and then names exactly the messages its peer never got.
"""

from __future__ import annotations

import itertools
import random

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from reliable_tcp.common.listener import read_hello
from reliable_tcp.common.session import Action, Deliver, DropLink, Ended, LivenessEvidence, Notify, SessionPolicy
from reliable_tcp.common.status import EventKind
from reliable_tcp.core.config import SessionConfig
from reliable_tcp.core.engine import SessionEngine
from reliable_tcp.core.handshake import ServerHandshake, SessionRegistry, reject_reply
from reliable_tcp.core.state import TERMINAL_STATES

CONFIG = SessionConfig(
    heartbeat_interval=1.0, dead_after=4.0, resume_window=20.0, window_messages=6, window_bytes=64, max_message_size=16, ack_delay=0.01
)
NOTHING = LivenessEvidence()


class PolicyPair(RuleBasedStateMachine):
    """A client policy and its server policies over one in-memory connection."""

    def __init__(self) -> None:
        super().__init__()
        rng = random.Random(3)
        self.now = 0.0
        self.registry = SessionRegistry(CONFIG, token_source=rng.randbytes)
        self.client: SessionPolicy[str] = SessionPolicy(
            SessionEngine(CONFIG, client=True, token_source=rng.randbytes), "client", durable=False, restored=False, wants_events=True)
        self.servers: dict[bytes, SessionPolicy[str]] = {}
        self.server: SessionPolicy[str] | None = None  # the one the current connection reached
        self.numbers = itertools.count(1)
        self.client_link: str | None = None
        self.server_link: str | None = None
        self.order = 0
        self.reader: ServerHandshake | None = None
        self.to_server = bytearray()
        self.to_client = bytearray()
        # What each session sent and got, by the policy's id: a server session
        # the client never heard back from is orphaned when it asks anew.
        self.sent: dict[int, list[bytes]] = {}
        self.delivered: dict[int, list[bytes]] = {}
        self.endings: dict[int, list[Ended]] = {}
        self.events: dict[int, list[EventKind]] = {}

    # ----------------------------------------------------------- carrying out

    def _apply(self, policy: SessionPolicy[str], side: str, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Deliver):
                assert not self.endings.get(id(policy)), "a message delivered after the end"
                self.delivered.setdefault(id(policy), []).extend(action.messages)
            elif isinstance(action, DropLink):
                self._connection_gone(action.link)
            elif isinstance(action, Notify):
                self.events.setdefault(id(policy), []).append(action.event.kind)
                event(f"{side} {action.event.kind}")
            elif isinstance(action, Ended):
                self.endings.setdefault(id(policy), []).append(action)

    def _connection_gone(self, link: str) -> None:
        """A side dropped ``link``: the other side learns of it (EOF or RST)."""
        if link not in (self.client_link, self.server_link):
            return  # an older connection, already gone
        self.to_server.clear()
        self.to_client.clear()
        client_link, server_link = self.client_link, self.server_link
        self.client_link = self.server_link = None
        if client_link is not None:
            self._apply(self.client, "client", self.client.link_lost(client_link, self.now, "gone", None, abort=True))
        if server_link is not None and self.server is not None:
            self._apply(self.server, "server", self.server.link_lost(server_link, self.now, "gone", None, abort=True))

    def _pump(self) -> None:
        if self.client_link is not None and self.client.link == self.client_link:
            self.to_server += self.client.engine.data_to_send(self.now)
        server = self.server
        if server is not None and self.server_link is not None and server.link == self.server_link and server.output_allowed:
            self.to_client += server.engine.data_to_send(self.now)

    # ------------------------------------------------------------------ rules

    @precondition(lambda self: self.client_link is None and not self.client.ended)
    @rule()
    def connect(self) -> None:
        number = next(self.numbers)
        self.client_link = f"c{number}"
        self.order = number
        self.reader = ServerHandshake(None)
        self.server = None
        actions, refusal = self.client.open_link(self.client_link, self.now)
        assert refusal is None
        self._apply(self.client, "client", actions)
        self._pump()

    @rule(count=st.integers(1, 200))
    def deliver_to_server(self, count: int) -> None:
        chunk = bytes(self.to_server[:count])
        del self.to_server[:count]
        if not chunk:
            return
        if self.server_link is None:
            assert self.reader is not None
            hello, answer, refusal = read_hello(self.reader, chunk)
            self.to_client += answer
            if refusal is None and hello is not None:
                link = f"s{self.order}"
                if hello.resume:
                    server = self.servers.get(hello.session_id)
                    if server is None:
                        refusal = self.registry.unknown_session(hello)
                    else:
                        secret = self.registry.new_secret()
                        actions, refusal = server.open_link(link, self.now, order=self.order, hello=hello, new_secret=secret)
                        self._apply(server, "server", actions)
                else:
                    engine = self.registry.start(hello, self.now)
                    server = SessionPolicy(engine, "server", durable=False, restored=False, wants_events=True)
                    self.servers[engine.session_id] = server
                    actions, refusal = server.open_link(link, self.now, order=self.order)
                    self._apply(server, "server", actions)
                if refusal is None:
                    self.server, self.server_link = server, link
            if refusal is not None:
                self.to_client += reject_reply(refusal)
        elif self.server is not None:
            self._apply(self.server, "server", self.server.received(self.server_link, chunk, self.now))
        self._pump()

    @rule(count=st.integers(1, 200))
    def deliver_to_client(self, count: int) -> None:
        chunk = bytes(self.to_client[:count])
        del self.to_client[:count]
        if chunk and self.client_link is not None:
            self._apply(self.client, "client", self.client.received(self.client_link, chunk, self.now))
        self._pump()

    @rule()
    def deliver_everything(self) -> None:
        """A healthy stretch: both ways until nothing is in flight."""
        for _ in range(20):
            if not (self.to_server or self.to_client):
                break
            self.deliver_to_server(len(self.to_server))
            self.deliver_to_client(len(self.to_client))

    @rule(side=st.sampled_from(["client", "server"]), size=st.integers(0, 12))
    def send(self, side: str, size: int) -> None:
        policy = self.client if side == "client" else self.server
        if policy is None or policy.ending is not None or policy.closing or not policy.engine.can_send(size):
            return
        if policy.engine.state in TERMINAL_STATES:
            return
        sent = self.sent.setdefault(id(policy), [])
        payload = b"%d:" % len(sent) + b"x" * size
        if not policy.engine.can_send(len(payload)):
            return
        policy.engine.send_message(payload, self.now)
        sent.append(payload)
        self._apply(policy, side, policy.absorb(self.now))
        self._pump()

    @rule()
    def cut(self) -> None:
        link = self.client_link or self.server_link
        if link is not None:
            self._connection_gone(link)

    @rule(seconds=st.sampled_from([0.005, 0.5, 1.5, 4.5, 25.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds
        for side, policy in [("client", self.client), *(("server", server) for server in self.servers.values())]:
            check = policy.liveness_check(self.now, reading_paused=False)
            if check is not None:
                self._apply(policy, side, policy.timers_due(self.now, check, policy.link, NOTHING))
        self._pump()

    # ------------------------------------------------------------- invariants

    def _peer(self, server: SessionPolicy[str]) -> bool:
        """Whether ``server`` is the session the client holds."""
        return self.servers.get(self.client.engine.session_id) is server

    @invariant()
    def exactly_once_in_order(self) -> None:
        client_sent = self.sent.get(id(self.client), [])
        for server in self.servers.values():
            got = self.delivered.get(id(server), [])
            assert got == client_sent[: len(got)], f"a server session got {got!r}, the client sent {client_sent!r}"
            if not self._peer(server):
                assert not got, "a session the client never joined got its messages"
        peer = self.servers.get(self.client.engine.session_id)
        got = self.delivered.get(id(self.client), [])
        sent = self.sent.get(id(peer), []) if peer is not None else []
        assert got == sent[: len(got)], f"the client got {got!r}, its server session sent {sent!r}"

    @invariant()
    def each_session_ends_once_and_names_what_its_peer_lacks(self) -> None:
        for policy, side in [(self.client, "client"), *((server, "server") for server in self.servers.values())]:
            endings = self.endings.get(id(policy), [])
            assert len(endings) <= 1
            assert (policy.ending is not None) == bool(endings)
            peer = self.servers.get(self.client.engine.session_id)
            if endings and side == "client" and peer is not None:
                # What the server never got is among what the client is told about.
                missing = self.sent.get(id(policy), [])[len(self.delivered.get(id(peer), [])):]
                told = [payload for _, payload in endings[0].ending.unacked]
                assert missing == told[len(told) - len(missing):] if missing else True

    @invariant()
    def events_tell_a_consistent_story(self) -> None:
        for kinds in self.events.values():
            assert kinds.count(EventKind.CONNECTED) <= 1
            ends = [kind for kind in kinds if kind in (EventKind.CLOSED, EventKind.FAILED)]
            assert len(ends) <= 1 and (not ends or kinds[-1] in ends)

    @invariant()
    def the_policy_holds_the_connection_the_front_has(self) -> None:
        assert self.client.link in (None, self.client_link)
        if self.server is not None:
            assert self.server.link in (None, self.server_link) or self.server_link is None


PolicyPair.TestCase.settings = settings(max_examples=80, stateful_step_count=60, deadline=None)
test_policy_pair = PolicyPair.TestCase
