"""Real faults against the real kernel: two network namespaces joined by a veth pair.

Cable pulls (``ip link set down``), blackholes and RST injection (iptables),
a lossy high-latency path, a flapping link and an outage longer than the
resume window, through the library API (numbered messages both ways, each
side its own process) and through rtcat. Needs root; skips with the reason
otherwise. ``RTCP_NETNS_HEARTBEATS=3,0.5`` runs every scenario with each
heartbeat (CI uses 0.5 s); ``RTCP_RELIABILITY_LOG=path`` appends each
scenario's measured figures as JSON lines (docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from netns import ROOT, NetPair
from reliable_tcp.testing.checker import check_stream

pytestmark = [pytest.mark.netns, pytest.mark.slow]

_REASON = NetPair.unavailable()
if _REASON is not None:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

HEARTBEATS = [float(h) for h in os.environ.get("RTCP_NETNS_HEARTBEATS", "0.5").split(",")]
PEER = [sys.executable, str(ROOT / "tests" / "support" / "netns_peer.py")]
PORT = 7000


@pytest.fixture
def net() -> Iterator[NetPair]:
    pair = NetPair()
    try:
        yield pair
    finally:
        pair.close()


class Peer:
    """A peer process whose stdout lines are collected as they come."""

    def __init__(self, net: NetPair, side: str, argv: list[str]) -> None:
        self.proc = net.spawn(side, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, name=f"test-peer-{side}", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self.changed:
                self.lines.append(raw.decode().strip())
                self.changed.notify_all()

    def wait_line(self, predicate: Callable[[str], bool], timeout: float) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: any(predicate(line) for line in self.lines), timeout):
                raise AssertionError(f"peer did not print the expected line; got {self.lines[-3:]}")

    def finish(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"peer did not finish; stderr: {self._stderr()}") from None
        self.reader.join(5)
        return code

    def _stderr(self) -> str:
        return self.proc.stderr.read().decode() if self.proc.stderr else ""


#: Applies a fault to a running stream (given the client and server peers);
#: returns when it began and when the link was whole again.
Fault = Callable[["Peer", "Peer"], tuple[float, float]]


def delivered_at_least(count: int) -> Callable[[str], bool]:
    return lambda line: line.startswith("delivered ") and int(line.split()[1]) >= count


def run_stream(
    net: NetPair,
    tmp: Path,
    fault: Fault,
    *,
    heartbeat: float,
    count: int = 3000,
    rate: float = 300.0,
    client_extra: list[str] | None = None,
    server_extra: list[str] | None = None,
    start_when: Callable[[str], bool] | None = None,
    server_address: str | None = None,
    connect_address: str | None = None,
    resume_window: float = 120.0,
    expect_status: int = 0,
    finish_timeout: float = 240.0,
) -> dict[str, Any]:
    """Stream ``count`` numbered messages each way, apply ``fault`` once the
    stream is under way, and check both directions with the checker."""
    server_address = server_address or f"{net.addr['b']}:{PORT}"
    connect_address = connect_address or server_address
    common = ["--count", str(count), "--rate", str(rate), "--heartbeat", str(heartbeat), "--resume-window", str(resume_window)]
    server = Peer(net, "b", [*PEER, "server", "--address", server_address, "--out", str(tmp / "b.json"), *common,
                             *(server_extra or [])])
    server.wait_line(lambda line: line == "listening", 20)
    client = Peer(net, "a", [*PEER, "client", "--address", connect_address, "--out", str(tmp / "a.json"), *common,
                             *(client_extra or [])])
    client.wait_line(start_when or delivered_at_least(count // 5), 60)
    fault_start, link_back = fault(client, server)
    codes = (client.finish(finish_timeout), server.finish(finish_timeout))
    a = json.loads((tmp / "a.json").read_text())
    b = json.loads((tmp / "b.json").read_text())
    assert codes == (expect_status, expect_status), (codes, a.get("lost"), b.get("lost"))
    for sender, receiver in ((a, b), (b, a)):
        sent = list(range(sender["sent"]))
        unacked = set(sender["unacked"]) | set(sender.get("unacked_from_receiver", []))
        tally = check_stream(sent, set(sent) - unacked, receiver["delivered"])
        assert tally.ok, tally.summary()
        # Nothing silently dropped: whatever did not arrive was reported back.
        assert set(sent) - set(receiver["delivered"]) <= unacked
    disconnected = [t for kind, t, *_ in a["events"] + b["events"] if kind == "disconnected" and t >= fault_start]
    resumed = [t for kind, t, *_ in a["events"] if kind == "resumed" and t >= link_back]
    figures = {
        "detection_s": round(min(disconnected) - fault_start, 3) if disconnected else None,
        "resume_s": round(min(resumed) - link_back, 3) if resumed else None,
        "replayed": sum(r for kind, _, _, r in a["events"] + b["events"] if kind == "resumed"),
        "resumes": a["stats"]["resumes"],
        "messages_each_way": count,
    }
    return {"a": a, "b": b, "figures": figures}


def record(name: str, heartbeat: float, figures: dict[str, Any], **extra: Any) -> None:
    path = os.environ.get("RTCP_RELIABILITY_LOG")
    line = {"scenario": name, "heartbeat": heartbeat, **figures, **extra}
    print(json.dumps(line))
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


def outage(start: Callable[[], None], stop: Callable[[], None], seconds: float) -> Fault:
    def fault(*_: Peer) -> tuple[float, float]:
        began = time.monotonic()
        start()
        time.sleep(seconds)  # the outage lasts this long: it is the stimulus, not a synchronisation
        stop()
        return began, time.monotonic()

    return fault


@pytest.mark.parametrize("heartbeat", HEARTBEATS)
@pytest.mark.parametrize("side", ["a", "b"])
@pytest.mark.timeout(300)
def test_cable_pull(net: NetPair, tmp_path: Path, heartbeat: float, side: str) -> None:
    fault = outage(lambda: net.link(side, False), lambda: net.link(side, True), 10)
    result = run_stream(net, tmp_path, fault, heartbeat=heartbeat)
    assert result["figures"]["resumes"] >= 1
    record(f"cable pull 10 s ({'client' if side == 'a' else 'server'} side)", heartbeat, result["figures"])


@pytest.mark.parametrize("heartbeat", HEARTBEATS)
@pytest.mark.timeout(400)
def test_long_outage_inside_the_resume_window(net: NetPair, tmp_path: Path, heartbeat: float) -> None:
    fault = outage(lambda: net.link("a", False), lambda: net.link("a", True), 60)
    result = run_stream(net, tmp_path, fault, heartbeat=heartbeat, count=2000, rate=200)
    assert result["figures"]["resumes"] >= 1
    record("long outage 60 s", heartbeat, result["figures"])


@pytest.mark.parametrize("heartbeat", HEARTBEATS)
@pytest.mark.timeout(300)
def test_blackhole(net: NetPair, tmp_path: Path, heartbeat: float) -> None:
    fault = outage(net.blackhole, net.clear_rules, 10)
    result = run_stream(net, tmp_path, fault, heartbeat=heartbeat)
    assert result["figures"]["resumes"] >= 1
    record("blackhole 10 s (iptables DROP)", heartbeat, result["figures"])


@pytest.mark.parametrize("heartbeat", HEARTBEATS)
@pytest.mark.timeout(300)
def test_rst_injection(net: NetPair, tmp_path: Path, heartbeat: float) -> None:
    fault = outage(net.inject_resets, net.clear_rules, 5)
    result = run_stream(net, tmp_path, fault, heartbeat=heartbeat)
    assert result["figures"]["resumes"] >= 1
    record("RST injection 5 s", heartbeat, result["figures"])


@pytest.mark.parametrize("heartbeat", HEARTBEATS)
@pytest.mark.timeout(300)
def test_flapping_link(net: NetPair, tmp_path: Path, heartbeat: float) -> None:
    def fault(*_: Peer) -> tuple[float, float]:
        began = time.monotonic()
        for _ in range(10):
            net.link("a", False)
            time.sleep(1)  # the flap pattern itself: 1 s down, 2 s up
            net.link("a", True)
            time.sleep(2)
        return began, time.monotonic() - 2

    result = run_stream(net, tmp_path, fault, heartbeat=heartbeat, count=4000, rate=200)
    record("flapping 10 x (1 s down, 2 s up)", heartbeat, result["figures"])


@pytest.mark.parametrize("heartbeat", HEARTBEATS)
@pytest.mark.timeout(300)
def test_bad_path_for_the_whole_run(net: NetPair, tmp_path: Path, heartbeat: float) -> None:
    # No sch_netem here: loss from the iptables statistic match, delay and
    # jitter from the fault proxy placed on the server host's path.
    proxy = net.spawn(
        "b",
        [sys.executable, str(ROOT / "tools" / "rtproxy"), str(PORT + 1), "127.0.0.1", str(PORT),
         "--host", net.addr["b"], "--latency", "0.05", "--jitter", "0.025"],
        stderr=subprocess.PIPE,
    )
    assert proxy.stderr is not None
    assert b"rtproxy:" in proxy.stderr.readline()  # it is listening
    net.random_loss(0.05)

    def fault(*_: Peer) -> tuple[float, float]:
        now = time.monotonic()
        return now, now

    started = time.monotonic()
    result = run_stream(
        net, tmp_path, fault, heartbeat=heartbeat, count=1500, rate=150,
        server_address=f"127.0.0.1:{PORT}", connect_address=f"{net.addr['b']}:{PORT + 1}",
    )
    elapsed = time.monotonic() - started
    record(
        "bad path: 100 ms +/- 50 ms round trip, 5% loss each way", heartbeat, result["figures"],
        throughput_msgs_per_s=round(2 * 1500 / elapsed, 1),
    )


@pytest.mark.parametrize("heartbeat", HEARTBEATS)
@pytest.mark.timeout(300)
def test_outage_longer_than_the_resume_window_reports_exactly_what_was_lost(
    net: NetPair, tmp_path: Path, heartbeat: float
) -> None:
    window = max(3.0, 4 * heartbeat)
    fault = outage(lambda: net.link("a", False), lambda: net.link("a", True), window + 3 * heartbeat + 5)
    result = run_stream(net, tmp_path, fault, heartbeat=heartbeat, resume_window=window, expect_status=3, count=3000)
    a, b = result["a"], result["b"]
    assert a["lost"] and b["lost"]
    # Both sides report the messages the other never acknowledged, and only those
    # that could have been missed: everything before them was delivered.
    for sender, receiver in ((a, b), (b, a)):
        unacked = sorted(set(sender["unacked"]) | set(sender.get("unacked_from_receiver", [])))
        assert unacked, "a lost session with traffic in flight reports what was unacknowledged"
        assert receiver["delivered"] == list(range(len(receiver["delivered"])))
        assert unacked[0] <= len(receiver["delivered"])
    record("outage longer than the resume window", heartbeat, result["figures"], outcome="SessionLost on both sides")


@pytest.mark.timeout(300)
def test_rtcat_file_across_a_cable_pull(net: NetPair, tmp_path: Path) -> None:
    data = tmp_path / "in.bin"
    data.write_bytes(os.urandom(5 * 1024 * 1024))
    # A 8 Mbit/s link, so the 5 MiB transfer takes long enough to be cut in the middle.
    subprocess.run(
        ["ip", "netns", "exec", net.ns["a"], "tc", "qdisc", "add", "dev", net.dev["a"], "root", "tbf",
         "rate", "8mbit", "burst", "32kbit", "latency", "400ms"],
        check=True, timeout=10,
    )
    rtcat = [sys.executable, str(ROOT / "tools" / "rtcat"), "--heartbeat", "0.5"]
    out = tmp_path / "out.bin"
    with open(out, "wb") as fout, open(data, "rb") as fin:
        listener = net.spawn("b", [*rtcat, "-l", net.addr["b"], str(PORT)], stdout=fout, stderr=subprocess.PIPE)
        sender = net.spawn("a", [*rtcat, "-v", "--stats", net.addr["b"], str(PORT)], stdin=fin, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while out.stat().st_size < 1024 * 1024:
            assert time.monotonic() < deadline, "the transfer did not start"
            time.sleep(0.05)  # polling the output file's size with a deadline
        net.link("a", False)
        time.sleep(5)  # the cable stays out this long
        net.link("a", True)
        assert sender.wait(120) == 0, sender.stderr.read().decode() if sender.stderr else ""
        assert listener.wait(60) == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(data.read_bytes()).hexdigest()


@pytest.mark.timeout(300)
def test_a_slow_consumer_is_not_a_dead_link(net: NetPair, tmp_path: Path) -> None:
    """The client's application stops reading for 12 s (8 x dead_after) while
    the server streams 64 KiB messages at it: windows fill, TCP advertises a
    zero window, and nobody is disconnected or sends anything twice."""

    def fault(client: Peer, _: Peer) -> tuple[float, float]:
        client.wait_line(lambda line: line == "reading again", 60)
        now = time.monotonic()
        return now, now

    result = run_stream(
        net, tmp_path, fault, heartbeat=0.5, count=600, rate=2000, start_when=lambda line: line == "paused",
        client_extra=["--size", "65536", "--pause-at", "50", "--pause-for", "12", "--queue-bytes", str(1 << 20)],
        server_extra=["--size", "65536"],
    )
    paused = next(t for kind, t, *_ in result["a"]["events"] if kind == "paused")
    for side in ("a", "b"):
        # Printed whole (an assertion message is cut short): shown only if the test fails.
        timeline = [(kind, round(t - paused, 3), detail) for kind, t, detail, _ in result[side]["events"]]
        print(json.dumps({"side": side, "stats": result[side]["stats"], "timeline": timeline}))
    for side in ("a", "b"):
        stats = result[side]["stats"]
        assert stats["disconnects"] == 0 and stats["retransmitted"] == 0, (side, stats)
    record("slow consumer: reads nothing for 12 s (dead_after 1.5 s)", 0.5, result["figures"], disconnects=0)


@pytest.mark.timeout(300)
def test_a_dead_link_is_detected_in_time_even_while_the_consumer_is_paused(net: NetPair, tmp_path: Path) -> None:
    """The same pause, and the cable is pulled in the middle of it: the
    paused side can't hear its peer (it is not reading), but the peer's
    kernel stops acknowledging its pings, and that is the verdict."""

    def fault(*_: Peer) -> tuple[float, float]:
        time.sleep(3)  # well into the pause: the windows are full by now
        began = time.monotonic()
        net.blackhole()
        time.sleep(5)  # the outage itself
        net.clear_rules()
        return began, time.monotonic()

    result = run_stream(
        net, tmp_path, fault, heartbeat=0.5, count=600, rate=2000, start_when=lambda line: line == "paused",
        client_extra=["--size", "65536", "--pause-at", "50", "--pause-for", "12", "--queue-bytes", str(1 << 20)],
        server_extra=["--size", "65536"],
    )
    began = result["figures"]["detection_s"]
    for side in ("a", "b"):
        detected = [t for kind, t, *_ in result[side]["events"] if kind == "disconnected"]
        assert detected, f"{side} never saw the outage"
    # dead_after is 1.5 s: both verdicts come within it, plus a heartbeat of slack.
    assert began is not None and began <= 1.5 + 0.5 + 0.5, result["figures"]
    a_first = min(t for kind, t, *_ in result["a"]["events"] if kind == "disconnected")
    b_first = min(t for kind, t, *_ in result["b"]["events"] if kind == "disconnected")
    assert abs(a_first - b_first) <= 1.0, "the paused side judged the link much later than its peer"
    record("cable pulled while the consumer is paused", 0.5, result["figures"])


@pytest.mark.parametrize("side", ["a", "b"])
@pytest.mark.timeout(300)
def test_a_stalled_process_resumes_with_nothing_lost_every_time(net: NetPair, tmp_path: Path, side: str) -> None:
    """SIGSTOP one peer for 10 s (~7 x dead_after), three times: the other side
    declares it dead and keeps reconnecting; on waking, the stale attempts in
    the accept backlog must not take the session over from the live one."""

    def fault(client: Peer, server: Peer) -> tuple[float, float]:
        target = (client if side == "a" else server).proc
        began = time.monotonic()
        for _ in range(3):
            # `ip netns exec` execs the peer, so the PID is the peer's own.
            os.kill(target.pid, signal.SIGSTOP)
            time.sleep(10)  # frozen, like a paused VM
            os.kill(target.pid, signal.SIGCONT)
            time.sleep(3)  # awake long enough to resume and stream
        return began, time.monotonic()

    result = run_stream(net, tmp_path, fault, heartbeat=0.5, count=15000, rate=300, start_when=delivered_at_least(300))
    a, b = result["a"]["stats"], result["b"]["stats"]
    assert a["resumes"] >= 3
    # Every server-side resume is one the client completed: no stale takeover.
    assert b["resumes"] == a["resumes"], (a, b)
    record(f"{'client' if side == 'a' else 'server'} process stopped 3 x 10 s", 0.5, result["figures"])


@pytest.mark.timeout(120)
def test_close_and_connect_keep_their_deadlines_with_the_cable_out(net: NetPair, tmp_path: Path) -> None:
    server = net.spawn("b", [sys.executable, "-c", (
        "import reliable_tcp as rt, time\n"
        f"l = rt.listen(('{net.addr['b']}', {PORT}), heartbeat_interval=0.2)\n"
        "print('listening', flush=True)\n"
        "time.sleep(60)\n"
    )], stdout=subprocess.PIPE)
    assert server.stdout is not None and server.stdout.readline().strip() == b"listening"
    client = Peer(net, "a", [sys.executable, str(ROOT / "tests" / "support" / "netns_deadline_peer.py"), f"{net.addr['b']}:{PORT}"])
    client.wait_line(lambda line: line == "connected", 30)
    net.link("a", False)  # the cable stays out: every reconnect SYN goes unanswered
    client.wait_line(lambda line: line.startswith("{"), 60)
    result = json.loads(next(line for line in client.lines if line.startswith("{")))
    assert client.finish(10) == 0, result
    # Each attempt alone would wait 5 s for its SYN (handshake_timeout); the calls may not.
    assert result["close_s"] < 1.5 and result["close_error"] == "SessionLost(1)", result
    assert result["connect_s"] < 1.5 and result["connect_error"] == "TimeoutError", result
    assert result["threads"] == [], result
    assert result["threads_after_idle"] == [], result
    record("close(1 s) and connect(1 s) with the cable out", 0.2, {"close_s": round(result["close_s"], 3),
                                                                    "connect_s": round(result["connect_s"], 3)})


#: The asyncio front end over the same real faults: both peers on the event
#: loop, and each mixed pair (client front, server front).
ASYNCIO_PAIRS = {
    "asyncio-both": (["--front", "asyncio"], ["--front", "asyncio"]),
    "asyncio-client": (["--front", "asyncio"], []),
    "asyncio-server": ([], ["--front", "asyncio"]),
}


@pytest.mark.parametrize("pair", list(ASYNCIO_PAIRS))
@pytest.mark.timeout(300)
def test_asyncio_cable_pull(net: NetPair, tmp_path: Path, pair: str) -> None:
    client_extra, server_extra = ASYNCIO_PAIRS[pair]
    fault = outage(lambda: net.link("a", False), lambda: net.link("a", True), 5)
    result = run_stream(net, tmp_path, fault, heartbeat=0.5, client_extra=client_extra, server_extra=server_extra)
    assert result["figures"]["resumes"] >= 1
    # dead_after is 3 heartbeats (1.5 s): a busy loop must not delay the verdict much beyond it.
    assert result["figures"]["detection_s"] is not None and result["figures"]["detection_s"] <= 1.5 + 0.5 + 0.5
    record(f"cable pull 5 s ({pair})", 0.5, result["figures"])


@pytest.mark.timeout(300)
def test_asyncio_rst_injection(net: NetPair, tmp_path: Path) -> None:
    client_extra, server_extra = ASYNCIO_PAIRS["asyncio-both"]
    fault = outage(net.inject_resets, net.clear_rules, 5)
    result = run_stream(net, tmp_path, fault, heartbeat=0.5, client_extra=client_extra, server_extra=server_extra)
    assert result["figures"]["resumes"] >= 1
    record("RST injection 5 s (asyncio-both)", 0.5, result["figures"])


@pytest.mark.timeout(300)
def test_asyncio_slow_consumer_is_not_a_dead_link(net: NetPair, tmp_path: Path) -> None:
    """As test_a_slow_consumer_is_not_a_dead_link, with both peers on the loop."""

    def fault(client: Peer, _: Peer) -> tuple[float, float]:
        client.wait_line(lambda line: line == "reading again", 60)
        now = time.monotonic()
        return now, now

    result = run_stream(
        net, tmp_path, fault, heartbeat=0.5, count=600, rate=2000, start_when=lambda line: line == "paused",
        client_extra=["--size", "65536", "--pause-at", "50", "--pause-for", "8", "--queue-bytes", str(1 << 20),
                      "--front", "asyncio"],
        server_extra=["--size", "65536", "--front", "asyncio"],
    )
    for side in ("a", "b"):
        stats = result[side]["stats"]
        assert stats["disconnects"] == 0 and stats["retransmitted"] == 0, (side, stats)
    record("slow consumer: reads nothing for 8 s (asyncio-both)", 0.5, result["figures"], disconnects=0)


# ------------------------------------------------------------------ tunnels


def wait_port_in(net: NetPair, side: str, port: int, timeout: float = 20.0) -> None:
    """Wait until something listens on 127.0.0.1:``port`` inside host ``side``."""
    probe = ("import socket, sys, time\n"
             f"deadline = time.monotonic() + {timeout}\n"
             "while True:\n"
             "    try:\n"
             f"        socket.create_connection(('127.0.0.1', {port}), timeout=0.5).close(); break\n"
             "    except OSError:\n"
             "        if time.monotonic() > deadline: sys.exit(1)\n"
             "        time.sleep(0.05)\n")
    assert net.spawn(side, [sys.executable, "-c", probe]).wait(timeout + 5) == 0, f"nothing listens on {port} in {side}"


TUNNEL_RTCAT = [sys.executable, "-m", "reliable_tcp", "--heartbeat", "0.5", "-v"]


def slow_links(net: NetPair) -> None:
    """8 Mbit/s each way: slow enough that a transfer is still under way when the cable is pulled."""
    for side in "ab":
        subprocess.run(
            ["ip", "netns", "exec", net.ns[side], "tc", "qdisc", "add", "dev", net.dev[side], "root", "tbf",
             "rate", "8mbit", "burst", "32kbit", "latency", "400ms"],
            check=True, timeout=10,
        )


def tunnel_pair(net: NetPair, tmp: Path, target_port: int, local_port: int) -> None:
    """The listening end on b (allowing b's 127.0.0.1:target_port) and a -L on a, 8 Mbit/s each way."""
    slow_links(net)
    with open(tmp / "listener.err", "wb") as err:
        net.spawn("b", [*TUNNEL_RTCAT, "-l", net.addr["b"], str(PORT), "--allow", f"127.0.0.1:{target_port}"], stderr=err)
    with open(tmp / "forward.err", "wb") as err:
        net.spawn("a", [*TUNNEL_RTCAT, "-L", f"{local_port}:127.0.0.1:{target_port}", net.addr["b"], str(PORT)], stderr=err)
    wait_port_in(net, "a", local_port)


def serve_random_file(net: NetPair, side: str, tmp: Path, port: int) -> Path:
    """An unmodified http.server on ``side``'s 127.0.0.1:``port`` serving
    6 MB of random bytes as big.bin (and 100 kB as small.bin beside it)."""
    site = tmp / "site"
    site.mkdir()
    (site / "big.bin").write_bytes(os.urandom(6_000_000))
    (site / "small.bin").write_bytes(os.urandom(100_000))
    net.spawn(side, [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port_in(net, side, port)
    return site / "big.bin"


def http_fetch(url: str, out: Path) -> list[str]:
    """A command that downloads ``url`` to ``out`` (curl, or Python's urllib without it)."""
    if shutil.which("curl"):
        return ["curl", "-sf", "--max-time", "200", "-o", str(out), url]
    return [sys.executable, "-c", f"import urllib.request; urllib.request.urlretrieve({url!r}, {str(out)!r})"]


def size_of(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def pull_cable_when(net: NetPair, grown: Callable[[], int], at_least: int, seconds: float) -> float:
    """Pull a's cable once ``grown()`` reaches ``at_least`` bytes, for ``seconds``;
    return how long after the link came back the next byte arrived."""
    deadline = time.monotonic() + 60
    while grown() < at_least:
        assert time.monotonic() < deadline, "the transfer did not get going"
        time.sleep(0.02)  # polling progress with a deadline
    net.link("a", False)
    time.sleep(seconds)  # the outage itself
    size = grown()
    net.link("a", True)
    back = time.monotonic()
    while grown() == size:
        assert time.monotonic() < back + 60, "nothing arrived after the link came back"
        time.sleep(0.005)
    return time.monotonic() - back


@pytest.mark.timeout(300)
def test_tunnel_http_download_across_a_cable_pull(net: NetPair, tmp_path: Path) -> None:
    """An unmodified HTTP server and curl, a -L tunnel between them, the cable
    pulled for 5 s in the middle of a 6 MB download: curl sees nothing."""
    served = serve_random_file(net, "b", tmp_path, 8000)
    tunnel_pair(net, tmp_path, 8000, 8001)
    out = tmp_path / "out.bin"
    client = net.spawn("a", http_fetch("http://127.0.0.1:8001/big.bin", out))
    first_byte = pull_cable_when(net, lambda: size_of(out), 1_000_000, 5)
    assert client.wait(200) == 0, (tmp_path / "forward.err").read_text()
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(served.read_bytes()).digest()
    record("tunnel: HTTP download through -L, cable pulled 5 s", 0.5, {"first_byte_after_link_up_s": round(first_byte, 3)})


@pytest.mark.timeout(300)
def test_tunnel_ssh_session_across_a_cable_pull(net: NetPair, tmp_path: Path) -> None:
    """OpenSSH's ssh and sshd, unmodified, through a -L tunnel: 3 MB through
    a remote ``cat`` and back, the cable pulled for 5 s in the middle."""
    sshd, ssh, keygen = "/usr/sbin/sshd", shutil.which("ssh"), shutil.which("ssh-keygen")
    if not (os.path.exists(sshd) and ssh and keygen):
        pytest.skip("OpenSSH is not installed (apt-get install openssh-server openssh-client)")
    for name in ("hostkey", "userkey"):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True, timeout=30)
    (tmp_path / "authorized_keys").write_text((tmp_path / "userkey.pub").read_text())
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port 2222\nListenAddress 127.0.0.1\nHostKey {tmp_path / 'hostkey'}\nPidFile {tmp_path / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}\nPermitRootLogin prohibit-password\nStrictModes no\n"
        "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
    )
    made_privsep = not os.path.isdir("/run/sshd")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd insists on its privilege separation directory
    try:
        with open(tmp_path / "sshd.err", "wb") as err:
            net.spawn("b", [sshd, "-D", "-e", "-f", str(config)], stderr=err)
        wait_port_in(net, "b", 2222)
        tunnel_pair(net, tmp_path, 2222, 2200)
        data = tmp_path / "in.bin"
        data.write_bytes(os.urandom(3_000_000))
        out = tmp_path / "out.bin"
        argv = [ssh, "-p", "2200", "-i", str(tmp_path / "userkey"), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "root@127.0.0.1", "cat"]
        with open(data, "rb") as fin, open(out, "wb") as fout, open(tmp_path / "ssh.err", "wb") as err:
            client = net.spawn("a", argv, stdin=fin, stdout=fout, stderr=err)
        first_byte = pull_cable_when(net, lambda: out.stat().st_size, 500_000, 5)
        assert client.wait(200) == 0, (tmp_path / "ssh.err").read_text() + (tmp_path / "forward.err").read_text()
        assert out.read_bytes() == data.read_bytes()
        record("tunnel: ssh through -L, cable pulled 5 s", 0.5, {"first_byte_after_link_up_s": round(first_byte, 3)})
    finally:
        if made_privsep:
            os.rmdir("/run/sshd")


@pytest.mark.timeout(300)
def test_tunnel_reverse_forward_across_a_cable_pull(net: NetPair, tmp_path: Path) -> None:
    """-R: the web server is on a, the listener on b binds the forwarded
    port, and curl on b downloads 6 MB through it while a's cable is out
    for 5 s: the download completes, byte for byte."""
    served = serve_random_file(net, "a", tmp_path, 8000)
    slow_links(net)
    with open(tmp_path / "listener.err", "wb") as err:
        net.spawn("b", [*TUNNEL_RTCAT, "-l", net.addr["b"], str(PORT), "--allow-remote", "8080"], stderr=err)
    with open(tmp_path / "reverse.err", "wb") as err:
        net.spawn("a", [*TUNNEL_RTCAT, "-R", "8080:127.0.0.1:8000", net.addr["b"], str(PORT)], stderr=err)
    wait_port_in(net, "b", 8080)
    out = tmp_path / "out.bin"
    client = net.spawn("b", http_fetch("http://127.0.0.1:8080/big.bin", out))
    first_byte = pull_cable_when(net, lambda: size_of(out), 1_000_000, 5)
    assert client.wait(200) == 0, (tmp_path / "reverse.err").read_text() + (tmp_path / "listener.err").read_text()
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(served.read_bytes()).digest()
    # The forward itself outlived the outage: a new connection through it works too.
    again = tmp_path / "again.bin"
    assert net.spawn("b", http_fetch("http://127.0.0.1:8080/small.bin", again)).wait(60) == 0
    assert again.read_bytes() == (served.parent / "small.bin").read_bytes()
    record("tunnel: HTTP download through -R, cable pulled 5 s", 0.5, {"first_byte_after_link_up_s": round(first_byte, 3)})


@pytest.mark.timeout(300)
def test_tunnel_exec_both_ways_across_a_cable_pull(net: NetPair, tmp_path: Path) -> None:
    """--exec on both ends: a's command streams 4 MB and half-closes, b's
    command keeps a copy and answers with its sha256; a's cable is out for
    5 s in the middle, and the answer is still the right one."""
    data = tmp_path / "in.bin"
    data.write_bytes(os.urandom(4_000_000))
    copy, answer = tmp_path / "copy.bin", tmp_path / "answer.txt"
    slow_links(net)
    with open(tmp_path / "listener.err", "wb") as err:
        net.spawn("b", [*TUNNEL_RTCAT, "-l", net.addr["b"], str(PORT), "--exec", f"tee {copy} | sha256sum"], stderr=err)
    script = f"cat {data}; exec >&-; cat > {answer}"  # send, half-close, keep the reply
    with open(tmp_path / "exec.err", "wb") as err:
        command = net.spawn("a", [*TUNNEL_RTCAT, "--exec", script, net.addr["b"], str(PORT)], stderr=err)
    first_byte = pull_cable_when(net, lambda: size_of(copy), 1_000_000, 5)
    assert command.wait(200) == 0, (tmp_path / "exec.err").read_text() + (tmp_path / "listener.err").read_text()
    assert answer.read_text().split()[0] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert copy.read_bytes() == data.read_bytes()
    record("tunnel: --exec both ways, cable pulled 5 s", 0.5, {"first_byte_after_link_up_s": round(first_byte, 3)})
