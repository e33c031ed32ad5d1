"""rtcat tunnels as real processes on loopback: -L, -R, --exec, half-close,
refusals and resets, many connections at once. Unmodified programs are on
both ends (python -m http.server, curl when installed, sh commands); the
network-namespace suite pulls the cable under a tunnel (test_netns.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import UNIT, Worker, free_port, wait_for
from reliable_tcp.testing import FaultProxy

ROOT = Path(__file__).resolve().parents[2]
RTCAT = [sys.executable, "-m", "reliable_tcp"]
FAST = ["--heartbeat", str(0.1 * UNIT), "--dead-after", str(0.4 * UNIT)]


def wait_listening(port: int, timeout: float = 20.0) -> None:
    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    wait_for(up, timeout, f"something listening on {port}")


class Processes:
    """Processes a test starts; ended by PID at the end, whatever happened."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{name}.err", "wb") as err:
            proc = subprocess.Popen(argv, stderr=err, cwd=self.tmp, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                    **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def stderr(self, name: str) -> str:
        return (self.tmp / f"{name}.err").read_text(errors="replace")

    def end(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.end()


class TcpServer:
    """A target in the test process: ``handle(conn)`` per connection, one thread each."""

    def __init__(self, handle: object) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port = self.sock.getsockname()[1]
        self._handle = handle
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="test-target", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._handle, args=(conn,), name="test-target-conn", daemon=True)  # type: ignore[arg-type]
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._acceptor.join(5)
        for thread in self._threads:
            thread.join(10)


def digest_after_eof(conn: socket.socket) -> None:
    """Reads until the client half-closes, then answers with the sha256 of it all."""
    with conn:
        conn.settimeout(60)
        h = hashlib.sha256()
        while chunk := conn.recv(65536):
            h.update(chunk)
        conn.sendall(h.hexdigest().encode())


def echo(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(60)
        while chunk := conn.recv(65536):
            conn.sendall(chunk)


def tunnel_listener(procs: Processes, *extra: str, name: str = "listener") -> int:
    port = free_port()
    procs.start(name, [*RTCAT, "-l", "127.0.0.1", str(port), *FAST, *extra])
    wait_listening(port)
    return port


def local_forward(procs: Processes, server_port: int, target_port: int, *extra: str, name: str = "forward",
                  probe: bool = True) -> int:
    """Start ``rtcat -L``; with ``probe``, wait until it listens by connecting
    to it (each connection opens a tunnel: against a listener that serves one
    session, pass ``probe=False`` and use :func:`connect_when_listening`)."""
    port = free_port()
    procs.start(name, [*RTCAT, "-L", f"{port}:127.0.0.1:{target_port}", *FAST, *extra, "127.0.0.1", str(server_port)])
    if probe:
        wait_listening(port)
    return port


def connect_when_listening(port: int, timeout: float = 20.0) -> socket.socket:
    """The first connection to ``port`` that succeeds (refused ones are retried),
    so that no probe connection comes before it."""
    connected: list[socket.socket] = []

    def attempt() -> bool:
        try:
            connected.append(socket.create_connection(("127.0.0.1", port), timeout=30))
            return True
        except ConnectionRefusedError:
            return False

    wait_for(attempt, timeout, f"something listening on {port}")
    return connected[0]


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.fixture
def website(tmp_path: Path, procs: Processes) -> tuple[int, str]:
    """python -m http.server over a directory with a 20 MB random file; (port, its sha256)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "big.bin").write_bytes(os.urandom(20_000_000))
    port = free_port()
    procs.start("http", [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)])
    wait_listening(port)
    return port, hashlib.sha256((site / "big.bin").read_bytes()).hexdigest()


def download(port: int) -> str:
    """sha256 of big.bin fetched over HTTP (curl when installed, urllib otherwise)."""
    url = f"http://127.0.0.1:{port}/big.bin"
    if shutil.which("curl"):
        body = subprocess.run(["curl", "-sf", "--max-time", "60", url], capture_output=True, check=True).stdout
    else:
        import urllib.request

        with urllib.request.urlopen(url, timeout=60) as response:
            body = response.read()
    return hashlib.sha256(body).hexdigest()


def test_http_download_through_a_local_forward(procs: Processes, website: tuple[int, str]) -> None:
    http_port, expected = website
    server = tunnel_listener(procs, "--allow", f"127.0.0.1:{http_port}", "-v")
    forward = local_forward(procs, server, http_port, "-v")
    assert download(forward) == expected
    assert download(forward) == expected  # a second connection, a second session
    # Each download closed cleanly, with its byte counts (the readiness probe made a third, empty one).
    wait_for(lambda: procs.stderr("forward").count("bytes sent, 20000206 received") == 2, 10, "both closed cleanly")


def test_http_download_through_a_reverse_forward(procs: Processes, website: tuple[int, str]) -> None:
    http_port, expected = website
    reverse_port = free_port()
    server = tunnel_listener(procs, "--allow-remote", str(reverse_port))
    procs.start("reverse", [*RTCAT, "-R", f"{reverse_port}:127.0.0.1:{http_port}", *FAST, "127.0.0.1", str(server)])
    wait_listening(reverse_port)
    assert download(reverse_port) == expected


def test_half_close_carries_eof_and_the_answer_comes_back(procs: Processes) -> None:
    target = TcpServer(digest_after_eof)
    try:
        server = tunnel_listener(procs, "--allow", f"127.0.0.1:{target.port}")
        forward = local_forward(procs, server, target.port)
        data = os.urandom(3_000_000)
        with socket.create_connection(("127.0.0.1", forward), timeout=60) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # our side is done; the answer still has to come back
            assert read_all(sock) == hashlib.sha256(data).hexdigest().encode()
    finally:
        target.close()


def test_exec_on_both_ends(procs: Processes, tmp_path: Path) -> None:
    server = tunnel_listener(procs, "--exec", "tr a-z A-Z")
    out = tmp_path / "upper.txt"
    # The local command writes, closes its stdout (EOF goes across), then reads the answer.
    done = subprocess.run([*RTCAT, *FAST, "--exec", f"printf 'hello tunnel\\n'; exec >&-; cat > {out}", "127.0.0.1",
                           str(server)], capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == b"HELLO TUNNEL\n"


def test_exec_to_a_target_the_listener_allows(procs: Processes, tmp_path: Path) -> None:
    target = TcpServer(digest_after_eof)
    try:
        server = tunnel_listener(procs, "--allow", f"127.0.0.1:{target.port}")
        out = tmp_path / "digest"
        done = subprocess.run([*RTCAT, *FAST, "--exec", f"printf abc; exec >&-; cat > {out}", "--target",
                               f"127.0.0.1:{target.port}", "127.0.0.1", str(server)], capture_output=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr
        assert out.read_bytes() == hashlib.sha256(b"abc").hexdigest().encode()
    finally:
        target.close()


def expect_reset(sock: socket.socket) -> None:
    """The connection ends with RST, never a clean EOF."""
    sock.settimeout(30)
    with pytest.raises(ConnectionResetError):
        while sock.recv(65536):
            pass


def test_a_target_that_refuses_resets_the_program_and_both_ends_say_why(procs: Processes) -> None:
    closed = free_port()  # nothing listens there, but the listener allows it
    server = tunnel_listener(procs, "--allow", f"127.0.0.1:{closed}")
    forward = local_forward(procs, server, closed)
    with socket.create_connection(("127.0.0.1", forward), timeout=30) as sock:
        expect_reset(sock)
    wait_for(lambda: "refused" in procs.stderr("forward") and "refused" in procs.stderr("listener"), 10, "the reasons")
    assert f"127.0.0.1:{closed}" in procs.stderr("forward")


def test_a_target_not_allowed_is_refused(procs: Processes) -> None:
    target = TcpServer(echo)
    try:
        server = tunnel_listener(procs, "--allow", "127.0.0.1:1")  # allows another target only
        forward = local_forward(procs, server, target.port)
        with socket.create_connection(("127.0.0.1", forward), timeout=30) as sock:
            expect_reset(sock)
        wait_for(lambda: "not allowed" in procs.stderr("forward"), 10, "the refusal on the forwarding side")
        assert "not allowed" in procs.stderr("listener")
        # A plain listener (no --allow, --allow-remote or --exec) refuses tunnels and prints nothing.
        plain_port = free_port()
        plain = procs.start("plain", [*RTCAT, "-l", "127.0.0.1", str(plain_port), *FAST], stdout=subprocess.PIPE)
        wait_listening(plain_port)
        # No probe: a plain listener serves one session, and a probe's tunnel
        # request (opened before the probe's close was seen, on a busy machine:
        # CI with a CPU hog beside it) took it, so the test's own connection
        # waited out the forwarder's connect timeout instead of a reset.
        to_plain = local_forward(procs, plain_port, target.port, name="to-plain", probe=False)
        with connect_when_listening(to_plain) as sock:
            expect_reset(sock)
        wait_for(lambda: "serves no tunnels" in procs.stderr("to-plain"), 10, "the plain listener's refusal")
        wait_for(lambda: "serves no tunnels" in procs.stderr("plain"), 10, "the plain listener to say why")
        plain.terminate()
        assert plain.stdout is not None and plain.stdout.read() == b""
    finally:
        target.close()


def test_a_reset_by_the_target_reaches_the_program_as_a_reset(procs: Processes) -> None:
    def reset_after_hello(conn: socket.socket) -> None:
        conn.recv(5)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()  # RST

    target = TcpServer(reset_after_hello)
    try:
        server = tunnel_listener(procs, "--allow", f"127.0.0.1:{target.port}")
        forward = local_forward(procs, server, target.port)
        with socket.create_connection(("127.0.0.1", forward), timeout=30) as sock:
            sock.sendall(b"hello")
            expect_reset(sock)
    finally:
        target.close()


def test_a_lost_session_resets_both_programs(procs: Processes) -> None:
    accepted: list[socket.socket] = []
    ended: list[str] = []  # how the target's connection ended
    got_end = threading.Event()

    def hold(conn: socket.socket) -> None:
        accepted.append(conn)
        conn.settimeout(60)
        try:
            while conn.recv(65536):
                pass
            ended.append("a clean EOF")
        except OSError as exc:
            ended.append(type(exc).__name__)
        finally:
            got_end.set()

    target = TcpServer(hold)
    try:
        server = tunnel_listener(procs, "--allow", f"127.0.0.1:{target.port}", "--resume-window", "1")
        with FaultProxy(("127.0.0.1", server)) as proxy:
            # No readiness probe: its tunnel would be a second target connection,
            # and the outage could start before this test's own one got there.
            forward = local_forward(procs, proxy.address[1], target.port, "--resume-window", "1", probe=False)
            with connect_when_listening(forward) as sock:
                sock.sendall(b"before the outage")
                wait_for(lambda: bool(accepted), 10, "the target's connection")
                proxy.blackhole()  # longer than dead_after + resume_window: the session is lost
                expect_reset(sock)
            got_end.wait(30)
            assert ended == ["ConnectionResetError"], (ended, procs.stderr("listener"), procs.stderr("forward"))
    finally:
        target.close()


@pytest.mark.timeout(180)
def test_two_hundred_tunnelled_connections_at_once(procs: Processes) -> None:
    target = TcpServer(echo)
    try:
        server = tunnel_listener(procs, "--allow", f"127.0.0.1:{target.port}")
        forward = local_forward(procs, server, target.port)
        count = 200
        barrier = threading.Barrier(count)

        def one(index: int) -> None:
            payload = os.urandom(20_000 + index)
            with socket.create_connection(("127.0.0.1", forward), timeout=120) as sock:
                barrier.wait(120)  # all 200 open at the same time
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                assert read_all(sock) == payload

        workers = [Worker(lambda i=i: one(i), f"tunnel-{i}") for i in range(count)]  # type: ignore[misc]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.result(150)
    finally:
        target.close()


def test_tunnel_usage_errors(procs: Processes) -> None:
    for argv, words in (
        (["-L", "nonsense", "127.0.0.1", "9"], "expected [BIND:]PORT:HOST:HPORT"),
        (["--allow", "127.0.0.1:80", "127.0.0.1", "9"], "listening side"),
        (["-l", "9", "-L", "1:a:2"], "connecting side"),
        (["--target", "a:1", "127.0.0.1", "9"], "--target goes with --exec"),
    ):
        done = subprocess.run([*RTCAT, *argv], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 2 and words in done.stderr, (argv, done.stderr)


def test_a_plain_rtcat_session_to_a_tunnel_listener_without_exec_is_refused(procs: Processes) -> None:
    """Nothing to carry a plain stream to: the client exits non-zero and
    says so; no refusal arrives on its stdout as data (issue 25, item 3)."""
    server = tunnel_listener(procs, "--allow", "127.0.0.1:1")
    started = time.monotonic()
    done = subprocess.run([*RTCAT, *FAST, "127.0.0.1", str(server)], input=b"plain bytes", capture_output=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert time.monotonic() - started < 30
    wait_for(lambda: "runs no --exec command" in procs.stderr("listener"), 10, "the listener's reason")
    assert done.returncode == 3, done.stderr
    assert done.stdout == b""
    assert b"session lost: aborted" in done.stderr
    assert b"Traceback" not in done.stderr


@pytest.mark.parametrize("client_input", [b"hello, command\n", b""])
def test_a_plain_rtcat_client_talks_to_an_exec_listeners_command(procs: Processes, client_input: bytes) -> None:
    """As with ncat -l --sh-exec: a plain client's stream is the command's
    stdin and stdout, both ways, each direction ending on its own."""
    server = tunnel_listener(procs, "--exec", "tr a-z A-Z; echo done")
    done = subprocess.run([*RTCAT, *FAST, "127.0.0.1", str(server)], input=client_input, capture_output=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout == client_input.upper() + b"done\n"
    assert b"Traceback" not in done.stderr


def test_a_session_lost_after_a_half_close_still_resets_both_idle_programs(procs: Processes) -> None:
    """The program half-closed, the target read the EOF and sits idle: a
    lost session must still reach both as a reset, not leave them hanging."""
    target_saw: list[str] = []

    def idle_after_eof(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            received = 0
            try:
                while chunk := conn.recv(65536):
                    received += len(chunk)
            except ConnectionResetError:
                if not received:
                    return  # the readiness probe's connection, which may end either way
                target_saw.append("reset before the EOF")  # fails the test
                return
            if not received:
                return  # the readiness probe's empty connection
            target_saw.append("eof")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                # After an EOF, recv says b"" even once an RST came; a zero-byte
                # send reports the reset (EPIPE in CLOSE_WAIT, ECONNRESET otherwise).
                try:
                    conn.send(b"")
                except (ConnectionResetError, BrokenPipeError):
                    target_saw.append("reset")
                    return
                time.sleep(0.05)  # polling the socket's state with a deadline

    target = TcpServer(idle_after_eof)
    try:
        server = tunnel_listener(procs, "--allow", f"127.0.0.1:{target.port}", "--resume-window", "1")
        with FaultProxy(("127.0.0.1", server)) as proxy:
            forward = local_forward(procs, proxy.address[1], target.port, "--resume-window", "1")
            with socket.create_connection(("127.0.0.1", forward), timeout=30) as sock:
                sock.sendall(b"all I had to say")
                sock.shutdown(socket.SHUT_WR)
                wait_for(lambda: target_saw == ["eof"], 10, "the target to read the half-close")
                proxy.blackhole()  # the session is lost while both programs wait
                expect_reset(sock)
            wait_for(lambda: target_saw == ["eof", "reset"], 30, "the idle target to be reset")
    finally:
        target.close()
