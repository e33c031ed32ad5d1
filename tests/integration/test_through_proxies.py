"""Sessions through real proxies (issue 29, item 1): tinyproxy for HTTP
CONNECT and dante for SOCKS5, each a process the test starts on loopback.

Every test checks the proxy's own log for the tunnels it opened, so a
session that silently dialled the listener directly would fail."""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import reliable_tcp as rt
from helpers import UNIT, Worker, fast_options, free_port, wait_for
from pki import OPENSSL, make_pki
from proxy_servers import DANTED, TINYPROXY, Dante, ProxyServer, Tinyproxy, can_run_dante_with_users

ROOT = Path(__file__).resolve().parents[2]
RTCAT = [sys.executable, str(ROOT / "tools" / "rtcat")]

needs_tinyproxy = pytest.mark.skipif(TINYPROXY is None, reason="needs tinyproxy (apt-get install tinyproxy)")
needs_dante = pytest.mark.skipif(DANTED is None, reason="needs dante's danted (apt-get install dante-server)")
KINDS = [pytest.param("http", marks=needs_tinyproxy), pytest.param("socks5", marks=needs_dante)]


def make_proxy(kind: str, directory: Path, users: dict[str, str] | None = None) -> ProxyServer:
    return Tinyproxy(directory, users) if kind == "http" else Dante(directory, users)


@pytest.fixture(params=KINDS)
def proxy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProxyServer]:
    with make_proxy(request.param, tmp_path / "proxy") as server:
        yield server


@pytest.fixture
def listener(front: Any) -> Iterator[Any]:
    with front.listen(("127.0.0.1", 0), **fast_options()) as server:
        yield server


def stream(client: Any, server: Any, count: int, tag: bytes) -> None:
    """``count`` messages each way, checked exactly once and in order."""
    expected = [tag + b"-%d" % i for i in range(count)]
    for message in expected:
        client.send(message)
        server.send(message.upper())
    assert [server.recv(timeout=10) for _ in expected] == expected
    assert [client.recv(timeout=10) for _ in expected] == [m.upper() for m in expected]


def one_session(front: Any, listener: Any, count: int, tag: bytes, **options: Any) -> None:
    """Open a session with ``listener`` (``options``: the proxy, TLS), stream
    ``count`` messages each way, close it cleanly."""
    client = front.connect(listener.address, **options, **fast_options())
    try:
        server = listener.accept(timeout=5)
        stream(client, server, count, tag)
        client.close(timeout=10)
        server.close(timeout=10)
    finally:
        client.abort()


def test_a_session_streams_both_ways_through_the_proxy(front: Any, listener: Any, proxy: ProxyServer) -> None:
    one_session(front, listener, 500, b"through", proxy=proxy.url())
    assert proxy.tunnels_to(listener.address[1]) >= 1  # more if a busy machine made the session resume (through the proxy too)


@pytest.mark.timeout(120)
def test_the_proxy_killed_and_restarted_mid_stream_loses_nothing(front: Any, listener: Any, proxy: ProxyServer) -> None:
    port = listener.address[1]
    client = front.connect(listener.address, proxy=proxy.url(), **fast_options(resume_window=60.0 * UNIT))
    try:
        server = listener.accept(timeout=5)
        total = 3000
        expected = [b"m-%d" % i for i in range(total)]
        received: list[bytes] = []

        def receive() -> None:
            while len(received) < total:
                received.append(server.recv(timeout=60))

        def send() -> None:
            for message in expected:
                client.send(message)

        receiver, sender = Worker(receive, "receiver"), Worker(send, "sender")
        receiver.start()
        sender.start()
        wait_for(lambda: len(received) >= total // 4, 30, "a quarter of the stream")
        proxy.kill()
        wait_for(lambda: client.state is rt.ChannelState.DISCONNECTED, 10, "the client to notice the proxy is gone")
        failed = client.statistics().failed_attempts
        wait_for(lambda: client.statistics().failed_attempts >= failed + 2, 20, "reconnects meeting the dead proxy")
        assert client.state is rt.ChannelState.DISCONNECTED  # still waiting: the session is not lost
        proxy.start()
        sender.result()
        receiver.result()
        assert received == expected
        # The resume went through the proxy too (its log may trail the data a little).
        wait_for(lambda: proxy.tunnels_to(port) >= 2, 10, "the resumed tunnel in the proxy's log")
        client.close(timeout=10)
        server.close(timeout=10)
    finally:
        client.abort()


@pytest.mark.parametrize("kind", KINDS)
def test_proxy_credentials_right_and_wrong(front: Any, listener: Any, kind: str, tmp_path: Path) -> None:
    if kind == "socks5" and not can_run_dante_with_users():
        pytest.skip("dante checks users against the system's files: needs root, unshare and openssl")
    with make_proxy(kind, tmp_path / "proxy", {"alice": "s3cret"}) as proxy:
        with pytest.raises(rt.ProxyError) as raised:
            front.connect(listener.address, proxy=proxy.url("alice", "wrong-password"), **fast_options(connect_timeout=30))
        error = raised.value
        # Raised at once, as itself: the deadline would have raised TimeoutError.
        assert not error.transient
        assert "wrong-password" not in str(error)
        assert error.proxy == f"{kind}://alice:***@127.0.0.1:{proxy.port}"
        if kind == "http":
            assert re.match(r"HTTP/1\.[01] 40[17] ", error.answer)  # tinyproxy says 401 to wrong credentials
        else:
            assert "user name and password refused" in error.answer
        no_credentials = "407 Proxy Authentication Required" if kind == "http" else "no acceptable authentication method"
        with pytest.raises(rt.ProxyError, match=no_credentials):
            front.connect(listener.address, proxy=proxy.url(), **fast_options())
        assert proxy.tunnels_to(listener.address[1]) == 0

        one_session(front, listener, 50, b"authenticated", proxy=proxy.url("alice", "s3cret"))
        assert proxy.tunnels_to(listener.address[1]) >= 1


@needs_tinyproxy
@pytest.mark.timeout(120)
def test_a_proxy_that_refuses_only_during_a_reconnect_is_retried(front: Any, listener: Any, tmp_path: Path) -> None:
    """A refusal that would fail a first connect (407) is only a failed
    attempt on a reconnect: the same proxy let the session through before."""
    proxy = Tinyproxy(tmp_path / "open")
    proxy.start()
    client = front.connect(listener.address, proxy=proxy.url(), **fast_options(resume_window=60.0 * UNIT))
    strict = Tinyproxy(tmp_path / "strict", {"alice": "s3cret"})
    strict.port = proxy.port
    try:
        server = listener.accept(timeout=5)
        stream(client, server, 10, b"before")
        proxy.kill()
        strict.start()
        wait_for(lambda: strict.requests_to(listener.address[1]) >= 1, 20, "a reconnect refused by the proxy")
        failed = client.statistics().failed_attempts
        wait_for(lambda: client.statistics().failed_attempts >= failed + 2, 20, "more refused reconnects")
        assert client.state is rt.ChannelState.DISCONNECTED
        strict.kill()
        proxy.start()
        wait_for(lambda: client.statistics().resumes >= 1, 20, "the resume through the open proxy")
        stream(client, server, 10, b"after")
        client.close(timeout=10)
        server.close(timeout=10)
    finally:
        client.abort()
        strict.kill()
        proxy.kill()


@needs_tinyproxy
def test_the_environment_chooses_the_proxy_unless_told_otherwise(
    front: Any, listener: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = listener.address[1]
    with Tinyproxy(tmp_path / "proxy") as proxy:

        def session(through_proxy: bool, **options: Any) -> None:
            before = proxy.tunnels_to(port)
            one_session(front, listener, 5, b"env", **options)
            if through_proxy:
                wait_for(lambda: proxy.tunnels_to(port) > before, 10, "the tunnel in the log")
            else:
                assert proxy.tunnels_to(port) == before, options

        monkeypatch.setenv("https_proxy", proxy.url())
        session(True)
        session(False, proxy=False)
        session(True, proxy=None)
        monkeypatch.setenv("no_proxy", "localhost,127.0.0.0/8")
        session(False)
        monkeypatch.delenv("https_proxy")
        monkeypatch.delenv("no_proxy")
        monkeypatch.setenv("ALL_PROXY", proxy.url())
        session(True)


@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command to make test certificates")
def test_tls_runs_end_to_end_through_the_proxy(front: Any, proxy: ProxyServer, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(pki / "server.pem", pki / "server.key")
    client_context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with front.listen(("127.0.0.1", 0), ssl_context=server_context, **fast_options()) as listener:
        one_session(front, listener, 50, b"secret", proxy=proxy.url(), ssl_context=client_context)
        assert proxy.tunnels_to(listener.address[1]) >= 1
        # The certificate is checked against the listener, not the proxy.
        wrong_name = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        with pytest.raises(rt.TLSHandshakeError):
            front.connect(listener.address, proxy=proxy.url(), ssl_context=wrong_name, server_hostname="elsewhere.example",
                          **fast_options())


@needs_tinyproxy
@pytest.mark.timeout(120)
def test_rtcat_sends_a_file_through_a_proxy(tmp_path: Path) -> None:
    data = tmp_path / "in.bin"
    data.write_bytes(os.urandom(512 * 1024))
    port = free_port()
    fast = ["--heartbeat", str(0.1 * UNIT), "--dead-after", str(0.4 * UNIT)]
    with Tinyproxy(tmp_path / "proxy") as proxy:
        with open(tmp_path / "listener.out", "wb") as out, open(tmp_path / "listener.err", "wb") as err:
            listening = subprocess.Popen([*RTCAT, "-l", "127.0.0.1", str(port), *fast], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err)
        try:
            with open(data, "rb") as source:
                sending = subprocess.run([*RTCAT, *fast, "--proxy", proxy.url(), "127.0.0.1", str(port)], stdin=source,
                                         capture_output=True, timeout=60 * UNIT)
            assert sending.returncode == 0, sending.stderr.decode()
            assert listening.wait(60 * UNIT) == 0, (tmp_path / "listener.err").read_text()
        finally:
            if listening.poll() is None:
                listening.kill()
                listening.wait()
        assert hashlib.sha256((tmp_path / "listener.out").read_bytes()).digest() == hashlib.sha256(data.read_bytes()).digest()
        assert proxy.tunnels_to(port) >= 1


@pytest.mark.parametrize(
    ("args", "says"),
    [(["--proxy", "ftp://proxy:21", "127.0.0.1", "9"], "only http://"),
     (["--proxy", "http://p:1", "--no-proxy", "127.0.0.1", "9"], "not both"),
     (["-l", "--proxy", "http://p:1", "9"], "connecting side")],
)
def test_rtcat_refuses_a_proxy_it_cant_use_before_any_session(args: list[str], says: str) -> None:
    done = subprocess.run([*RTCAT, *args], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert done.returncode == 2
    assert says in done.stderr.decode()
