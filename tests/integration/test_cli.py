"""rtcat and the demo as real processes, with the fault proxy between them."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import UNIT, fast_options, free_port, wait_for
from reliable_tcp.testing import FaultProxy

ROOT = Path(__file__).resolve().parents[2]
RTCAT = [sys.executable, str(ROOT / "tools" / "rtcat")]
FAST = ["--heartbeat", str(0.1 * UNIT), "--dead-after", str(0.4 * UNIT)]


class Rtcat:
    """An rtcat process with its stdio in files (so large transfers never block on pipes)."""

    def __init__(self, tmp: Path, name: str, args: list[str], stdin: Path | None = None) -> None:
        self.out = tmp / f"{name}.out"
        self.err = tmp / f"{name}.err"
        with open(stdin or os.devnull, "rb") as fin, open(self.out, "wb") as fout, open(self.err, "wb") as ferr:
            self.proc = subprocess.Popen([*RTCAT, *args], stdin=fin, stdout=fout, stderr=ferr)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout * UNIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"rtcat did not finish; stderr: {self.err.read_text()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def procs() -> Iterator[list[Rtcat]]:
    started: list[Rtcat] = []
    yield started
    for proc in started:
        proc.kill()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("fault", ["blackhole", "reset", "close"])
@pytest.mark.timeout(120)
def test_file_survives_faults_mid_stream(tmp_path: Path, procs: list[Rtcat], fault: str) -> None:
    data = tmp_path / "in.bin"
    data.write_bytes(os.urandom(4 * 1024 * 1024))
    port = free_port()
    listener = Rtcat(tmp_path, "listener", ["-l", "127.0.0.1", str(port), *FAST])
    procs.append(listener)
    with FaultProxy(("127.0.0.1", port)) as proxy:
        proxy.set_faults("both", bandwidth=4 * 1024 * 1024)  # about a second per MiB-ish: faults land mid-stream
        sender = Rtcat(tmp_path, "sender", [*FAST, "--stats", "127.0.0.1", str(proxy.address[1])], stdin=data)
        procs.append(sender)
        for n in range(1, 3):
            wait_for(lambda: proxy.bytes_forwarded["up"] > n * 1024 * 1024, 60, "progress")  # noqa: B023
            if fault == "blackhole":
                proxy.blackhole()
                time.sleep(0.8 * UNIT)  # the outage itself lasts this long; nothing waits on it
                proxy.set_faults("both", blackhole=False)
            elif fault == "reset":
                proxy.reset()
            else:
                proxy.close_connections()
        assert sender.wait() == 0, sender.err.read_text()
        assert listener.wait() == 0, listener.err.read_text()
    assert sha256(listener.out) == sha256(data)
    stats = sender.err.read_text()
    assert "sent 4194304 bytes" in stats


def test_blackhole_longer_than_dead_after_resumes(tmp_path: Path, procs: list[Rtcat]) -> None:
    data = tmp_path / "in.bin"
    data.write_bytes(os.urandom(1024 * 1024))
    port = free_port()
    listener = Rtcat(tmp_path, "listener", ["-l", "127.0.0.1", str(port), *FAST, "-v"])
    procs.append(listener)
    with FaultProxy(("127.0.0.1", port)) as proxy:
        proxy.set_faults("both", bandwidth=512 * 1024)
        sender = Rtcat(tmp_path, "sender", [*FAST, "-v", "--stats", "127.0.0.1", str(proxy.address[1])], stdin=data)
        procs.append(sender)
        wait_for(lambda: proxy.bytes_forwarded["up"] > 256 * 1024, 60, "progress")
        before = sender.err.read_bytes().count(b"disconnected")
        proxy.blackhole()
        wait_for(lambda: sender.err.read_bytes().count(b"disconnected") > before, 10, "the sender to notice the pulled cable")
        proxy.set_faults("both", blackhole=False)
        assert sender.wait() == 0, sender.err.read_text()
        assert listener.wait() == 0, listener.err.read_text()
    assert sha256(listener.out) == sha256(data)
    assert "resumed" in sender.err.read_text()


def test_line_mode_and_bidirectional(tmp_path: Path, procs: list[Rtcat]) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_bytes(b"".join(b"line %d\n" % i for i in range(1000)))
    port = free_port()
    listener = Rtcat(tmp_path, "listener", ["-l", "127.0.0.1", str(port), "--lines", *FAST, "--stats"])
    procs.append(listener)
    sender = Rtcat(tmp_path, "sender", ["--lines", *FAST, "127.0.0.1", str(port)], stdin=lines)
    procs.append(sender)
    assert sender.wait() == 0 and listener.wait() == 0
    assert listener.out.read_bytes() == lines.read_bytes()
    assert "in 1001 messages" in listener.err.read_text()  # 1000 lines, then the end of the sender's stream


def test_keep_listening_serves_sessions_one_after_another(tmp_path: Path, procs: list[Rtcat]) -> None:
    port = free_port()
    listener = Rtcat(tmp_path, "listener", ["-l", "-k", "127.0.0.1", str(port), *FAST])
    procs.append(listener)
    for i in range(3):
        data = tmp_path / f"in{i}"
        data.write_bytes(b"session %d\n" % i)
        sender = Rtcat(tmp_path, f"sender{i}", [*FAST, "127.0.0.1", str(port)], stdin=data)
        procs.append(sender)
        assert sender.wait() == 0, sender.err.read_text()
        wait_for(lambda: listener.out.read_bytes().count(b"\n") == i + 1, 10, "output")  # noqa: B023
    assert listener.out.read_bytes() == b"session 0\nsession 1\nsession 2\n"
    assert listener.proc.poll() is None  # still listening
    listener.kill()


def test_listening_without_a_host_takes_ipv4_and_ipv6(tmp_path: Path, procs: list[Rtcat]) -> None:
    """`rtcat -l PORT` listens on every address, as docs/cli.md says: IPv4
    and IPv6 clients alike (it bound 0.0.0.0 only)."""
    try:
        socket.socket(socket.AF_INET6).close()
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    port = free_port()
    listener = Rtcat(tmp_path, "listener", ["-l", "-k", "-v", str(port), *FAST])
    procs.append(listener)
    for i, host in enumerate(["127.0.0.1", "::1"]):
        data = tmp_path / f"in{i}"
        data.write_bytes(b"over %s\n" % host.encode())
        sender = Rtcat(tmp_path, f"sender{i}", [*FAST, host, str(port)], stdin=data)
        procs.append(sender)
        assert sender.wait() == 0, sender.err.read_text()
        wait_for(lambda: listener.out.read_bytes().count(b"\n") == i + 1, 10, "output")  # noqa: B023
    assert listener.out.read_bytes() == b"over 127.0.0.1\nover ::1\n"
    assert f"listening on [::]:{port}" in listener.err.read_text()
    listener.kill()


def test_exit_codes(tmp_path: Path, procs: list[Rtcat]) -> None:
    usage = Rtcat(tmp_path, "usage", ["only-a-host"])
    assert usage.wait() == 2
    usage2 = Rtcat(tmp_path, "usage2", ["--heartbeat", "1", "--dead-after", "0.5", "127.0.0.1", "1"])
    assert usage2.wait() == 2
    nobody = Rtcat(tmp_path, "nobody", ["--connect-timeout", "0.5", "127.0.0.1", str(free_port())])
    assert nobody.wait() == 1
    assert "can't open a session" in nobody.err.read_text()


def test_session_lost_reports_unacknowledged_bytes(tmp_path: Path, procs: list[Rtcat]) -> None:
    port = free_port()
    short = [*FAST, "--resume-window", str(1.0 * UNIT)]
    listener = Rtcat(tmp_path, "listener", ["-l", "127.0.0.1", str(port), *short])
    procs.append(listener)
    with FaultProxy(("127.0.0.1", port)) as proxy:
        sender_proc = subprocess.Popen(
            [*RTCAT, *short, "127.0.0.1", str(proxy.address[1])],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        try:
            assert sender_proc.stdin is not None
            sender_proc.stdin.write(b"first\n")
            sender_proc.stdin.flush()
            wait_for(lambda: listener.out.exists() and listener.out.read_bytes() == b"first\n", 10, "first chunk")
            proxy.blackhole()
            sender_proc.stdin.write(b"x" * 1000)
            sender_proc.stdin.close()
            sender_proc.wait(timeout=30 * UNIT)
            assert sender_proc.stderr is not None
            err = sender_proc.stderr.read()
        finally:
            if sender_proc.poll() is None:
                sender_proc.kill()
                sender_proc.wait()
        assert sender_proc.returncode == 3, err
        # The 1000 bytes sent into the blackhole, and "first" too when its ack
        # was still on the way (delivered, but the sender can't know that).
        assert re.search(rb"(1000 bytes in 1 messages|1006 bytes in 2 messages) were not acknowledged", err), err
        assert listener.wait() == 3


def test_stdout_closed_early_ends_quietly(tmp_path: Path) -> None:
    port = free_port()
    command = f"{' '.join(RTCAT)} -l 127.0.0.1 {port} {' '.join(FAST)} < /dev/null | head -c 100 > /dev/null; exit ${{PIPESTATUS[0]}}"
    listener = subprocess.Popen(["bash", "-c", command], stderr=subprocess.PIPE)
    sender = subprocess.Popen(
        ["bash", "-c", f"head -c 20000000 /dev/zero | {' '.join(RTCAT)} {' '.join(FAST)} 127.0.0.1 {port}"],
        stderr=subprocess.PIPE,
    )
    try:
        _, err = listener.communicate(timeout=30 * UNIT)
        assert listener.returncode == 4
        assert b"Traceback" not in err
        sender.communicate(timeout=30 * UNIT)
        assert sender.returncode in (0, 3)
    finally:
        for proc in (listener, sender):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.timeout(120)
def test_demo_tally_is_clean() -> None:
    # The demo's blackhole is behind its fault proxy, a relay: detection takes
    # up to dead_after + one interval (0.6 + 0.2 s at the demo's heartbeat,
    # protocol.md 6.1). An outage of exactly that left no margin.
    result = subprocess.run(
        [*RTCAT, "demo", "--rounds", "1", "--outage", str(1.2 * UNIT), "--rate", "1000"],
        capture_output=True,
        timeout=100 * UNIT,
    )
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert err.count("lost 0, duplicated 0, reordered 0, unexpected 0") == 2
    assert "demo: PASS" in err
    for kind in ("blackhole", "reset", "close"):
        assert f"/{kind}" in err


def test_connect_says_what_it_waits_for_while_it_retries(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    done = subprocess.run([*RTCAT, "--connect-timeout", "6", "127.0.0.1", str(port)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert time.monotonic() - started >= 6
    lines = done.stderr.splitlines()
    assert lines[0].startswith(f"rtcat: waiting for a session with 127.0.0.1:{port}, retrying until ")
    assert any(line.startswith(f"rtcat: still no session with 127.0.0.1:{port}") for line in lines)
    assert lines[-1].startswith(f"rtcat: can't open a session with 127.0.0.1:{port}")


def test_python_m_reliable_tcp_is_rtcat() -> None:
    done = subprocess.run([sys.executable, "-m", "reliable_tcp", "--help"], capture_output=True, text=True,
                          timeout=30, cwd=ROOT)
    assert done.returncode == 0
    assert done.stdout.startswith("usage: rtcat [options] HOST PORT\n       rtcat -l [options] [HOST] PORT")


# ------------------------------------------------- each direction ends on its own


@pytest.mark.timeout(120)
def test_the_listening_side_sends_a_whole_file_to_a_client_with_no_input(tmp_path: Path, procs: list[Rtcat]) -> None:
    """The netcat idiom for sending from the listening side: the client's
    stdin ends at once, which ends only its direction (issue 25, item 1)."""
    data = tmp_path / "big.bin"
    data.write_bytes(os.urandom(8 * 1024 * 1024))
    port = free_port()
    listener = Rtcat(tmp_path, "listener", ["-l", "127.0.0.1", str(port), *FAST], stdin=data)
    procs.append(listener)
    wait_for(lambda: _listening(port), 20, "the listener")
    client = Rtcat(tmp_path, "client", [*FAST, "127.0.0.1", str(port)])  # stdin: /dev/null
    procs.append(client)
    assert client.wait() == 0, client.err.read_text()
    assert listener.wait() == 0, listener.err.read_text()
    assert sha256(client.out) == sha256(data)


@pytest.mark.timeout(120)
def test_both_sides_send_a_file_at_once(tmp_path: Path, procs: list[Rtcat]) -> None:
    up, down = tmp_path / "up.bin", tmp_path / "down.bin"
    up.write_bytes(os.urandom(3 * 1024 * 1024))
    down.write_bytes(os.urandom(2 * 1024 * 1024 + 7))
    port = free_port()
    listener = Rtcat(tmp_path, "listener", ["-l", "127.0.0.1", str(port), *FAST], stdin=down)
    procs.append(listener)
    wait_for(lambda: _listening(port), 20, "the listener")
    client = Rtcat(tmp_path, "client", [*FAST, "127.0.0.1", str(port)], stdin=up)
    procs.append(client)
    assert client.wait() == 0, client.err.read_text()
    assert listener.wait() == 0, listener.err.read_text()
    assert sha256(client.out) == sha256(down)
    assert sha256(listener.out) == sha256(up)


@pytest.mark.timeout(120)
def test_a_terminal_on_stdin_ends_its_direction_when_the_peer_is_done(tmp_path: Path, procs: list[Rtcat]) -> None:
    """`rtcat -l PORT > copy` typed in a shell: nobody will type Ctrl-D
    there, so the peer's end ends this side's too (what was typed was sent)."""
    import pty

    data = tmp_path / "in.bin"
    data.write_bytes(os.urandom(256 * 1024))
    port = free_port()
    controller, terminal = pty.openpty()
    try:
        out, err = tmp_path / "listener.out", tmp_path / "listener.err"
        with open(out, "wb") as fout, open(err, "wb") as ferr:
            listener = subprocess.Popen([*RTCAT, "-l", "127.0.0.1", str(port), *FAST], stdin=terminal, stdout=fout,
                                        stderr=ferr)
        try:
            wait_for(lambda: _listening(port), 20, "the listener")
            client = Rtcat(tmp_path, "client", [*FAST, "127.0.0.1", str(port)], stdin=data)
            procs.append(client)
            assert client.wait() == 0, client.err.read_text()
            assert listener.wait(60 * UNIT) == 0, err.read_text()
        finally:
            if listener.poll() is None:
                listener.kill()
                listener.wait()
    finally:
        os.close(controller)
        os.close(terminal)
    assert sha256(out) == sha256(data)


def test_a_peer_that_closes_before_this_sides_input_ended_is_an_error(tmp_path: Path, procs: list[Rtcat]) -> None:
    """Any program may close the session (its close ends its direction);
    if this side still had input to send, it says so and exits 3."""
    import reliable_tcp as rt

    data = tmp_path / "big.bin"
    data.write_bytes(os.urandom(32 * 1024 * 1024))
    with rt.listen(("127.0.0.1", 0), **fast_options()) as server:
        client = Rtcat(tmp_path, "client", [*FAST, "127.0.0.1", str(server.address[1])], stdin=data)
        procs.append(client)
        channel = server.accept(timeout=30)
        channel.recv(timeout=30)  # the transfer started; the server has had enough
        channel.close(timeout=30)
        assert client.wait() == 3, client.err.read_text()
    assert "closed the session before this side's input ended" in client.err.read_text()


# ------------------------------------------------------------- errors, cleanly


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _lost_at_once(channel: object, within: float) -> bool:
    """The session ended (SessionLost, not a resume wait) within ``within`` seconds."""
    import reliable_tcp as rt

    assert isinstance(channel, rt.Channel)
    try:
        while True:
            channel.recv(timeout=within)
    except rt.SessionLost:
        return True
    except (TimeoutError, rt.ChannelClosed):
        return False


@pytest.mark.parametrize("listening", [False, True], ids=["connecting", "listening"])
def test_a_line_over_the_peers_limit_is_an_error_that_ends_the_session(
    tmp_path: Path, procs: list[Rtcat], listening: bool
) -> None:
    import reliable_tcp as rt

    lines = tmp_path / "lines.txt"
    lines.write_bytes(b"short\n" + b"x" * 5000 + b"\nnever sent\n")
    options = fast_options(max_message_size=1000, resume_window=120.0)
    if listening:
        port = free_port()
        rtcat = Rtcat(tmp_path, "rtcat", ["-l", "--lines", "127.0.0.1", str(port), *FAST], stdin=lines)
        procs.append(rtcat)
        wait_for(lambda: _listening(port), 20, "the listener")
        channel = rt.connect(("127.0.0.1", port), timeout=30, **options)
        peer = None
    else:
        peer = rt.listen(("127.0.0.1", 0), **options)
        rtcat = Rtcat(tmp_path, "rtcat", ["--lines", *FAST, "127.0.0.1", str(peer.address[1])], stdin=lines)
        procs.append(rtcat)
        channel = peer.accept(timeout=30)
    try:
        assert rtcat.wait() == 5, rtcat.err.read_text()
        err = rtcat.err.read_text()
        assert "a line of" in err and "1000 bytes" in err, err
        assert "Traceback" not in err
        assert channel.recv(timeout=30) == b"short"
        assert _lost_at_once(channel, 10), "the peer waited out the resume window"
    finally:
        channel.abort()
        if peer is not None:
            peer.close()


def test_chunks_fit_a_peer_that_announces_a_small_limit(tmp_path: Path, procs: list[Rtcat]) -> None:
    import reliable_tcp as rt

    data = tmp_path / "in.bin"
    data.write_bytes(os.urandom(1024 * 1024 + 3))
    with rt.listen(("127.0.0.1", 0), **fast_options(max_message_size=40_000)) as server:
        client = Rtcat(tmp_path, "client", [*FAST, "127.0.0.1", str(server.address[1])], stdin=data)
        procs.append(client)
        channel = server.accept(timeout=30)
        received = bytearray()
        while (message := channel.recv(timeout=30)) != b"":  # the empty message ends rtcat's stream
            assert len(message) <= 40_000
            received += message
        channel.send(b"")  # ours ends too: rtcat closes
        with pytest.raises(rt.ChannelClosed):
            channel.recv(timeout=30)
        channel.close(timeout=30)
        assert client.wait() == 0, client.err.read_text()
    assert bytes(received) == data.read_bytes()


def test_a_missing_input_file_is_a_usage_error_before_any_session(tmp_path: Path) -> None:
    port = free_port()  # nothing listens: an rtcat that tried to connect would wait out --connect-timeout
    done = subprocess.run([*RTCAT, "--connect-timeout", "60", "--input", str(tmp_path / "missing"), "127.0.0.1",
                           str(port)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert "No such file" in done.stderr and "Traceback" not in done.stderr


def test_closed_stdin_is_no_input_and_closed_stdout_is_an_error(tmp_path: Path, procs: list[Rtcat]) -> None:
    data = tmp_path / "in.txt"
    data.write_bytes(b"to a client whose stdin is closed\n")
    port = free_port()
    listener = Rtcat(tmp_path, "listener", ["-l", "127.0.0.1", str(port), *FAST], stdin=data)
    procs.append(listener)
    wait_for(lambda: _listening(port), 20, "the listener")
    done = subprocess.run(["bash", "-c", f"exec {' '.join(RTCAT)} {' '.join(FAST)} 127.0.0.1 {port} <&-"],
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data.read_bytes()
    assert listener.wait() == 0, listener.err.read_text()

    port = free_port()
    listener = Rtcat(tmp_path, "listener2", ["-l", "127.0.0.1", str(port), *FAST], stdin=data)
    procs.append(listener)
    wait_for(lambda: _listening(port), 20, "the listener")
    done = subprocess.run(["bash", "-c", f"exec {' '.join(RTCAT)} {' '.join(FAST)} 127.0.0.1 {port} >&-"],
                          stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    assert done.returncode == 4, done.stderr
    assert b"Traceback" not in done.stderr
    assert listener.wait() == 3, listener.err.read_text()  # told at once: the data was not written
