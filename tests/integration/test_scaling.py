"""More than one node behind a real HAProxy: resumes reach the node that
holds the session (its id is in the session id), new sessions are balanced,
and a node that dies takes its sessions with it, explicitly.

HAProxy runs with tools/haproxy_config.py's output, on loopback ports, as
a process the test starts and ends; the nodes are tests/support/node_server.py
processes. Skips when HAProxy is not installed (apt-get install haproxy)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import reliable_tcp as rt
from helpers import UNIT, Worker, fast_options, free_port, wait_for
from pki import OPENSSL, make_pki
from reliable_tcp.core import frames as f
from reliable_tcp.testing import FaultProxy

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import haproxy_config  # noqa: E402

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
NODE = [sys.executable, str(ROOT / "tests" / "support" / "node_server.py")]
SESSIONS = int(os.environ.get("RTCP_SCALING_SESSIONS", "300"))
#: The nodes' heartbeat (dead after three of them). Every cut here is a reset
#: or a close, seen at once whatever the timers; but hundreds of sessions share
#: two cores with the nodes and HAProxy, and sub-second liveness timers judge
#: a merely busy peer dead, each verdict adding a resume to the load: a resume
#: storm, not the routing under test.
NODE_HEARTBEAT = 0.5


def wait_listening(port: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    def up() -> bool:
        assert proc is None or proc.poll() is None, "the process exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    wait_for(up, 20, f"a listener on {port}")


class Cluster:
    """Node processes (by node id) and the HAProxy in front of them."""

    def __init__(self, tmp: Path, node_ids: list[int], resume_window: float = 60.0, journaled: bool = False,
                 tls_certificate: Path | None = None) -> None:
        self.tmp = tmp
        self.resume_window = resume_window
        self.journaled = journaled
        self.out = tmp / "out"
        self.out.mkdir()
        self.node_ports = {node: free_port() for node in node_ids}
        self.nodes: dict[int, subprocess.Popen[bytes]] = {}
        for node in node_ids:
            self.start_node(node)
        self.port = free_port()
        self.config = tmp / "haproxy.cfg"
        self.stats_socket = tmp / "haproxy.sock"
        self.config.write_text(haproxy_config.render(
            f"127.0.0.1:{self.port}", {n: f"127.0.0.1:{p}" for n, p in self.node_ports.items()}, check_interval_ms=200,
            check_timeout_ms=1500, stats_socket=str(self.stats_socket),
            tls_certificate=str(tls_certificate) if tls_certificate else None))
        self.haproxy: subprocess.Popen[bytes] | None = None
        self.start_haproxy()

    def start_node(self, node: int) -> None:
        with open(self.tmp / f"node{node}.err", "ab") as err:
            journal = ["--journal", str(self.tmp / f"journal-node{node}"), "--out", str(self.out)] if self.journaled else []
            proc = subprocess.Popen([*NODE, "--port", str(self.node_ports[node]), "--node-id", str(node),
                                     "--resume-window", str(self.resume_window), "--heartbeat", str(NODE_HEARTBEAT),
                                     "--log", *journal],
                                    stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.nodes[node] = proc
        wait_listening(self.node_ports[node], proc)

    def haproxy_command(self, command: str) -> str:
        """One command on HAProxy's stats socket (its runtime API); the answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(self.stats_socket))
            sock.sendall(command.encode() + b"\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        return answer.decode()

    def server_status(self, node: int) -> str:
        """HAProxy's verdict on a node: UP, DOWN, MAINT, ... (from ``show stat``)."""
        rows = [line.split(",") for line in self.haproxy_command("show stat").splitlines() if line and line[0] != "#"]
        header = self.haproxy_command("show stat").splitlines()[0].lstrip("# ").split(",")
        status = header.index("status")
        for row in rows:
            if row[0] == "nodes" and row[1] == f"node{node}":
                return row[status]
        raise AssertionError(f"node{node} is not in HAProxy's stats")

    def kill_node(self, node: int) -> None:
        proc = self.nodes[node]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def start_haproxy(self) -> None:
        assert HAPROXY is not None
        with open(self.tmp / "haproxy.err", "ab") as err:
            self.haproxy = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)], stdout=subprocess.DEVNULL, stderr=err)
        wait_listening(self.port, self.haproxy)
        # HAProxy's stats socket can come after the frontend already accepts
        # connections: bound under a temporary name, renamed, then listening.
        wait_for(self._stats_answer, 20, "HAProxy's stats socket")

    def _stats_answer(self) -> bool:
        try:
            return "Name: HAProxy" in self.haproxy_command("show info")
        except OSError:
            return False

    def restart_haproxy(self) -> None:
        assert self.haproxy is not None
        self.haproxy.kill()  # every connection through it dies at once
        self.haproxy.wait(10)
        self.start_haproxy()

    def cut(self, proxy: FaultProxy, kind: str) -> None:
        """Cut every client's connection: ``reset`` or ``close`` them at the
        fault proxy in front of HAProxy, or ``haproxy``: kill the balancer
        itself and start it again."""
        if kind == "reset":
            proxy.reset()
        elif kind == "close":
            proxy.close_connections()
        else:
            self.restart_haproxy()

    def misrouted(self) -> int:
        """How many resumes reached a node that did not hold their session
        (each node logs every refusal: NOT_HERE is a routing mistake)."""
        logs = [path.read_text() for path in self.tmp.glob("node*.err")]
        assert any("resumed session" in log for log in logs), "the nodes logged nothing: the count would mean nothing"
        return sum(log.count("NOT_HERE") for log in logs)

    def close(self) -> None:
        for proc in [*self.nodes.values(), *([self.haproxy] if self.haproxy else [])]:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if HAPROXY is None:
        pytest.skip("HAProxy is not installed (apt-get install haproxy)")
    # param: (node ids, resume window, flags...), the flags True (journaled nodes) or "tls"
    nodes, window, *flags = getattr(request, "param", ([1, 2, 3], 60.0))
    tls = None
    if "tls" in flags:  # HAProxy terminates TLS with the test CA's server certificate
        if OPENSSL is None:
            pytest.skip("needs the openssl command to make test certificates")
        (tmp_path / "pki").mkdir()
        pki = make_pki(tmp_path / "pki")
        tls = pki / "haproxy.pem"
        tls.write_bytes((pki / "server.pem").read_bytes() + (pki / "server.key").read_bytes())
    started = Cluster(tmp_path, nodes, window, journaled=True in flags, tls_certificate=tls)
    try:
        yield started
    finally:
        started.close()


def node_of(channel: rt.Channel) -> int:
    return f.node_id_of(bytes.fromhex(channel.session_id))


@pytest.mark.timeout(300)
def test_resumes_reach_their_node_through_haproxy_and_nothing_is_lost(cluster: Cluster) -> None:
    # Liveness timers for a loaded machine (see NODE_HEARTBEAT).
    options = fast_options(heartbeat_interval=0.5 * UNIT, dead_after=2.0 * UNIT, resume_window=60.0 * UNIT,
                           handshake_timeout=5.0 * UNIT)
    count = 120  # numbered messages per session, each echoed back by its node
    with FaultProxy(("127.0.0.1", cluster.port)) as proxy:
        clients = [rt.connect(proxy.address, timeout=60, **options) for _ in range(SESSIONS)]
        try:
            nodes = [node_of(c) for c in clients]
            assert set(nodes) == {1, 2, 3}, "new sessions were not balanced across the nodes"
            echoed: list[list[bytes]] = [[] for _ in clients]

            def stream(index: int) -> None:
                channel, rng = clients[index], random.Random(index)
                sent = 0
                while sent < count:
                    batch = [b"%d:%d" % (index, n) for n in range(sent, min(count, sent + rng.randint(1, 10)))]
                    channel.send_many(batch, timeout=120)
                    sent += len(batch)
                    while len(echoed[index]) < sent - 20:
                        echoed[index].extend(channel.recv_many(timeout=120))
                while len(echoed[index]) < count:
                    echoed[index].extend(channel.recv_many(timeout=120))

            workers = [Worker(lambda i=i: stream(i), f"scale-{i}") for i in range(SESSIONS)]  # type: ignore[misc]
            for worker in workers:
                worker.start()
            progress = lambda: sum(map(len, echoed))  # noqa: E731
            total = SESSIONS * count
            for n, cut in enumerate(["reset", "reset", "haproxy", "close"], start=1):
                wait_for(lambda: progress() >= n * total // 6, 120, f"progress before cut {n}")  # noqa: B023
                before = [c.statistics().resumes for c in clients]
                cluster.cut(proxy, cut)
                # Every session resumes (on its own node) before the next cut.
                wait_for(lambda: all(c.statistics().resumes > b for c, b in zip(clients, before, strict=True)), 120,  # noqa: B023
                         f"every session to resume after cut {n} ({cut})")
            for worker in workers:
                worker.result(240)
            for index, got in enumerate(echoed):
                assert got == [b"%d:%d" % (index, n) for n in range(count)], f"session {index}"
            assert [node_of(c) for c in clients] == nodes  # every session stayed with its node
            assert cluster.misrouted() == 0  # and HAProxy sent every resume straight there
            for client in clients:
                client.close(timeout=30)
            stats = [c.statistics() for c in clients]
            assert all(s.unacked_messages == 0 for s in stats)
            assert all(s.resumes >= 4 for s in stats)
        finally:
            for client in clients:
                client.abort()


@pytest.mark.parametrize("cluster", [([1, 2], 3.0)], indirect=True)
@pytest.mark.timeout(120)
def test_a_node_killed_for_good_ends_its_sessions_explicitly(cluster: Cluster) -> None:
    options = fast_options(resume_window=3.0 * UNIT, handshake_timeout=1.0 * UNIT)
    clients = [rt.connect(("127.0.0.1", cluster.port), timeout=30, **options) for _ in range(20)]
    try:
        for client in clients:
            client.send(b"hello")
            assert client.recv(timeout=10) == b"hello"
        doomed = [c for c in clients if node_of(c) == 2]
        spared = [c for c in clients if node_of(c) == 1]
        assert doomed and spared
        for client in doomed:
            client.send_many([b"unanswered"] * 3)  # whatever the node did not acknowledge is reported
        cluster.kill_node(2)
        killed = time.monotonic()
        for client in doomed:
            with pytest.raises(rt.SessionLost) as info:
                while True:
                    client.recv(timeout=30)
            # Within dead_after + the resume window (+ a heartbeat of slack).
            assert time.monotonic() - killed <= (0.4 + 3.0 + 1.0) * UNIT + 2.0
            assert all(payload in (b"hello", b"unanswered") for _, payload in info.value.unacked)
        for client in spared:
            client.send(b"still here")
            assert client.recv(timeout=10) == b"still here"
            client.close(timeout=10)
    finally:
        for client in clients:
            client.abort()


def test_a_resume_for_another_node_is_refused_as_not_here() -> None:
    with rt.listen(("127.0.0.1", 0), node_id=2, **fast_options()) as node2:
        with rt.listen(("127.0.0.1", 0), node_id=1, **fast_options()) as node1:
            client = rt.connect(node1.address, **fast_options())
            node1.accept(timeout=5)
            assert node_of(client) == 1  # type: ignore[arg-type]
            session = bytes.fromhex(client.session_id)
            client.abort()
        with socket.create_connection(node2.address, timeout=10) as sock:
            sock.sendall(f.encode(f.Hello(True, session, os.urandom(16), 1)))
            sock.settimeout(10)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        (reject,) = f.FrameDecoder(1 << 16).feed(data)
        assert isinstance(reject, f.Reject) and reject.reason is f.RejectReason.NOT_HERE
        assert "node 1" in reject.text and "node 2" in reject.text
    with pytest.raises(ValueError):
        rt.listen(("127.0.0.1", 0), node_id=70000)


@pytest.mark.parametrize("cluster", [([1, 2], 60.0, True)], indirect=True)
@pytest.mark.timeout(180)
def test_a_node_killed_and_restarted_on_its_journal_keeps_its_sessions(cluster: Cluster) -> None:
    """kill -9 a journaled node behind HAProxy mid-stream and start it again
    with the same node id and journal: its clients resume through the
    balancer, nothing is lost, and only a message written but not yet
    committed at the kill can come twice."""
    options = fast_options(resume_window=60.0 * UNIT, handshake_timeout=3.0 * UNIT)
    count = 300
    clients = [rt.connect(("127.0.0.1", cluster.port), timeout=30, **options) for _ in range(30)]
    try:
        assert {node_of(c) for c in clients} == {1, 2}

        def stream(channel: rt.Channel) -> None:
            for start in range(0, count, 10):
                channel.send_many([b"%d" % n for n in range(start, start + 10)], timeout=120)
                time.sleep(0.05)  # a steady stream (1.5 s), so the kill lands in the middle of it
            channel.close(timeout=120)  # returns once the node has committed everything

        workers = [Worker(lambda c=c: stream(c), "journaled-stream") for c in clients]  # type: ignore[misc]
        for worker in workers:
            worker.start()

        def lines() -> int:
            return sum(p.read_bytes().count(b"\n") for p in cluster.out.iterdir())

        wait_for(lambda: lines() >= len(clients) * count // 3, 60, "a third of the stream")
        cluster.kill_node(1)  # SIGKILL: its sessions live on only in its journal
        cluster.start_node(1)
        for worker in workers:
            worker.result(150)
        for client in clients:
            got = [int(x) for x in (cluster.out / client.session_id).read_bytes().split()]
            assert set(got) == set(range(count)), client.session_id
            assert len(got) - count <= 1
            assert client.statistics().unacked_messages == 0
        assert sum(c.statistics().resumes for c in clients if node_of(c) == 1) >= 1
    finally:
        for client in clients:
            client.abort()


@pytest.mark.parametrize("cluster", [([1, 2], 60.0, "tls")], indirect=True)
@pytest.mark.timeout(180)
def test_tls_terminated_at_haproxy_still_routes_every_resume_to_its_node(cluster: Cluster) -> None:
    """docs/scaling.md's first TLS setup: clients speak TLS to HAProxy, which
    terminates it and routes by the decrypted HELLO to plain nodes. Every
    resume after a reset and after an HAProxy restart reaches its node, and
    every message comes back once, in order."""
    context = ssl.create_default_context(cafile=str(cluster.tmp / "pki" / "ca.pem"))
    options = fast_options(resume_window=60.0 * UNIT, handshake_timeout=3.0 * UNIT)
    with FaultProxy(("127.0.0.1", cluster.port)) as proxy:
        clients = [rt.connect(proxy.address, timeout=60, ssl_context=context, server_hostname="localhost", **options)
                   for _ in range(20)]
        try:
            nodes = [node_of(c) for c in clients]
            assert set(nodes) == {1, 2}
            for round_, cut in enumerate(["reset", "haproxy", "close"]):
                for index, client in enumerate(clients):
                    client.send_many([b"%d:%d:%d" % (index, round_, n) for n in range(50)])
                before = [c.statistics().resumes for c in clients]
                cluster.cut(proxy, cut)
                for index, client in enumerate(clients):
                    got = [client.recv(timeout=60) for _ in range(50)]
                    assert got == [b"%d:%d:%d" % (index, round_, n) for n in range(50)], index
                wait_for(lambda: all(c.statistics().resumes > b for c, b in zip(clients, before, strict=True)), 60,  # noqa: B023
                         f"every session to resume after the {cut}")
            assert [node_of(c) for c in clients] == nodes
            assert cluster.misrouted() == 0  # HAProxy read the decrypted HELLO and sent every resume to its node
            for client in clients:
                client.close(timeout=30)
        finally:
            for client in clients:
                client.abort()


@pytest.mark.parametrize("cluster", [([1, 2], 60.0)], indirect=True)
@pytest.mark.timeout(120)
def test_new_sessions_go_to_the_least_loaded_node_after_every_session_resumed(cluster: Cluster) -> None:
    """Issue 25, item 9: six sessions on node 1 (node 2 in maintenance while
    they open), every connection cut and resumed on node 1, node 2 back:
    the next new sessions must all go to node 2. With resumes in a backend
    of their own, leastconn counted none of node 1's resumed sessions and
    alternated 1, 2, 1, 2."""
    options = fast_options(resume_window=60.0 * UNIT, handshake_timeout=3.0 * UNIT)
    cluster.haproxy_command("disable server nodes/node2")
    with FaultProxy(("127.0.0.1", cluster.port)) as proxy:
        loaded = [rt.connect(proxy.address, timeout=30, **options) for _ in range(6)]
        fresh: list[rt.Channel] = []
        try:
            assert {node_of(c) for c in loaded} == {1}
            cluster.haproxy_command("enable server nodes/node2")
            wait_for(lambda: cluster.server_status(2) == "UP", 20, "node 2 back in service")
            proxy.reset()
            wait_for(lambda: all(c.statistics().resumes >= 1 for c in loaded), 30, "every session to resume")
            for client in loaded:
                client.send(b"resumed")
                assert client.recv(timeout=10) == b"resumed"
            fresh = [rt.connect(proxy.address, timeout=30, **options) for _ in range(4)]
            assert [node_of(c) for c in fresh] == [2, 2, 2, 2], "new sessions did not go to the least-loaded node"
            assert cluster.misrouted() == 0
        finally:
            for client in [*loaded, *fresh]:
                client.abort()


@pytest.mark.parametrize("cluster", [([1, 2], 60.0)], indirect=True)
@pytest.mark.timeout(120)
def test_a_hung_node_is_taken_out_by_the_protocol_health_check(cluster: Cluster) -> None:
    """A node whose process hangs (SIGSTOP) still accepts TCP connections
    (the kernel does that): a connect-only health check keeps it in and
    new sessions wait out their handshake timeout there. The check that
    speaks the protocol (a HELLO for the zero session id, answered by a
    REJECT) takes it out, and new sessions go to the live node."""
    options = fast_options(resume_window=60.0 * UNIT, handshake_timeout=3.0 * UNIT)
    os.kill(cluster.nodes[2].pid, signal.SIGSTOP)
    clients: list[rt.Channel] = []
    try:
        wait_for(lambda: cluster.server_status(2).startswith("DOWN"), 30, "HAProxy to take the hung node out")
        assert cluster.server_status(1) == "UP"  # the live node answers the same check
        clients = [rt.connect(("127.0.0.1", cluster.port), timeout=30, **options) for _ in range(4)]
        assert [node_of(c) for c in clients] == [1, 1, 1, 1]
        for client in clients:
            client.send(b"served")
            assert client.recv(timeout=10) == b"served"
    finally:
        os.kill(cluster.nodes[2].pid, signal.SIGCONT)
        for client in clients:
            client.abort()
    wait_for(lambda: cluster.server_status(2) == "UP", 30, "the node back once it runs again")
    logs = (cluster.tmp / "node1.err").read_text()
    assert "health check" not in logs  # the check is logged at DEBUG only: one a second would drown the log


def test_node_ids_that_would_route_wrong_are_refused(tmp_path: Path) -> None:
    """node_id=0 would silently mean "no node id"; the same id on two nodes
    would send resumes to the wrong one: both are refused, not run."""
    import reliable_tcp.asyncio as rta

    with pytest.raises(rt.UsageError, match="node_id must be 1..65535"):
        rt.listen(("127.0.0.1", 0), node_id=0)

    async def listen_asyncio() -> None:
        await rta.listen(("127.0.0.1", 0), node_id=0)

    import asyncio

    with pytest.raises(rt.UsageError, match="node_id must be 1..65535"):
        asyncio.run(listen_asyncio())
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "rtcat"), "-l", "--node-id", "0", "127.0.0.1", "0"],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "--node-id N (1..65535)" in done.stderr
    with pytest.raises(ValueError, match="given twice"):
        haproxy_config.parse_nodes(["1=127.0.0.1:7001", "1=127.0.0.1:7002"])
    with pytest.raises(ValueError, match="1..65535"):
        haproxy_config.parse_nodes(["0=127.0.0.1:7001"])
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "haproxy_config.py"), "2=10.0.0.1:7000",
                           "2=10.0.0.2:7000"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "given twice" in done.stderr
