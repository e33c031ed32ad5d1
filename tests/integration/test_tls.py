"""TLS: round trip, resume over TLS, certificate checks, mutual TLS, mismatches."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import reliable_tcp as rt
from helpers import fast_options, wait_for
from pki import OPENSSL, make_pki
from reliable_tcp.testing import FaultProxy

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command to make test certificates")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_context(pki: Path, require_client: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    if require_client:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki / "ca.pem")
    return context


def client_context(pki: Path, ca: str = "ca.pem", cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / ca))
    if cert:
        context.load_cert_chain(pki / "client.pem", pki / "client.key")
    return context


@pytest.fixture
def tls_listener(pki: Path) -> Iterator[rt.Listener]:
    with rt.listen(("127.0.0.1", 0), ssl_context=server_context(pki), **fast_options()) as listener:
        yield listener


def test_round_trip_and_resume_over_tls(pki: Path, tls_listener: rt.Listener) -> None:
    with FaultProxy(tls_listener.address) as proxy:
        client = rt.connect(proxy.address, ssl_context=client_context(pki), server_hostname="localhost", **fast_options())
        server = tls_listener.accept(timeout=5)
        client.send(b"secret hello")
        assert server.recv(timeout=5) == b"secret hello"
        for i in range(3):
            resumes = client.statistics().resumes
            proxy.reset()
            wait_for(lambda: client.statistics().resumes > resumes, 10, "resume over TLS")  # noqa: B023
            client.send(b"after reset %d" % i)
            assert server.recv(timeout=5) == b"after reset %d" % i
        big = [bytes([i]) * 50_000 for i in range(40)]
        client.send_many(big)
        assert [server.recv(timeout=10) for _ in big] == big
        client.close()
        server.close()


def test_wrong_certificate_authority_fails_fast_and_clearly(pki: Path, tls_listener: rt.Listener, front: Any) -> None:
    # The same verdict on both front ends: a TLSHandshakeError (a ChannelBroken)
    # chained to the ssl module's own, raised at once rather than retried.
    started = time.monotonic()
    with pytest.raises(rt.TLSHandshakeError) as info:
        front.connect(tls_listener.address, ssl_context=client_context(pki, ca="other.pem"), timeout=10, **fast_options())
    assert time.monotonic() - started < 5
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    assert "certificate" in str(info.value).lower()


def test_wrong_host_name_is_refused(pki: Path, tls_listener: rt.Listener) -> None:
    with pytest.raises(rt.ChannelBroken):
        rt.connect(tls_listener.address, ssl_context=client_context(pki), server_hostname="elsewhere.example", timeout=10,
                   **fast_options())


def test_mutual_tls(pki: Path) -> None:
    with rt.listen(("127.0.0.1", 0), ssl_context=server_context(pki, require_client=True), **fast_options()) as listener:
        with pytest.raises((rt.ChannelBroken, TimeoutError)):
            rt.connect(listener.address, ssl_context=client_context(pki), timeout=2, **fast_options())
        client = rt.connect(listener.address, ssl_context=client_context(pki, cert=True), **fast_options())
        server = listener.accept(timeout=5)
        client.send(b"both sides proved who they are")
        assert server.recv(timeout=5) == b"both sides proved who they are"
        client.close()
        server.close()


def test_plain_client_against_a_tls_listener_gets_no_session(tls_listener: rt.Listener) -> None:
    with pytest.raises(TimeoutError):
        rt.connect(tls_listener.address, timeout=1.5, **fast_options())
    assert tls_listener.statistics().rejected_handshakes >= 1


def test_tls_client_against_a_plain_listener_fails_clearly(pki: Path) -> None:
    with rt.listen(("127.0.0.1", 0), **fast_options()) as plain:
        with pytest.raises(rt.ChannelBroken):
            rt.connect(plain.address, ssl_context=client_context(pki), timeout=10, **fast_options())
        assert plain.statistics().rejected_handshakes >= 1


def test_rtcat_over_tls(pki: Path, tmp_path: Path) -> None:
    import os
    import socket
    import sys

    rtcat = [sys.executable, str(Path(__file__).resolve().parents[2] / "tools" / "rtcat"), "--heartbeat", "0.2"]
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = str(probe.getsockname()[1])
    data = os.urandom(300_000)
    listener = subprocess.Popen(
        [*rtcat, "-l", "127.0.0.1", port, "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        sender = subprocess.run(
            [*rtcat, "--tls-ca", str(pki / "ca.pem"), "--tls-server-name", "localhost", "127.0.0.1", port],
            input=data, capture_output=True, timeout=60,
        )
        assert sender.returncode == 0, sender.stderr
        out, _ = listener.communicate(timeout=30)
        assert listener.returncode == 0
        assert out == data
        insecure = subprocess.run([*rtcat, "--insecure", "--connect-timeout", "1", "127.0.0.1", "1"], capture_output=True, timeout=60)
        assert b"WARNING: --insecure" in insecure.stderr
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()


class PortalProxy:
    """Forwards connections to ``target``; while :attr:`portal` is set, it
    answers every new one as a captive portal does (an HTTP redirect where
    the TLS server hello should be, then close)."""

    REDIRECT = b"HTTP/1.1 302 Found\r\nLocation: http://portal.example/\r\nContent-Length: 0\r\n\r\n"

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.portal = threading.Event()
        self.portal_answers = 0
        self._listening = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self._listening.getsockname()[:2]
        self._lock = threading.Lock()
        self._forwarded: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name="portal-proxy", daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listening.accept()
            except OSError:
                return  # closed
            if self.portal.is_set():
                with contextlib.suppress(OSError):
                    conn.sendall(self.REDIRECT)
                conn.close()
                with self._lock:
                    self.portal_answers += 1
                continue
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            with self._lock:
                self._forwarded += [conn, upstream]
            self._spawn(self._pump, conn, upstream)
            self._spawn(self._pump, upstream, conn)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Reset every forwarded connection."""
        with self._lock:
            forwarded, self._forwarded = self._forwarded, []
        for sock in forwarded:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listening.shutdown(socket.SHUT_RDWR)
        self._listening.close()
        self.cut()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)
            assert not thread.is_alive()

    def __enter__(self) -> PortalProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def test_a_captive_portal_during_a_reconnect_is_ridden_out(pki: Path, tls_listener: rt.Listener, front: Any) -> None:
    """Issue 25, item 4: a TLS session's connection drops, and for a while
    every new connection meets a captive portal (HTTP where the server
    hello should be). On a reconnect that is transient: the session is
    resumed once the real path is back, and the failed attempts are
    counted. (On the first connect a TLS failure still fails fast: the
    tests above.)"""
    with PortalProxy(tls_listener.address) as proxy:
        client = front.connect(
            proxy.address, ssl_context=client_context(pki), server_hostname="localhost", **fast_options(resume_window=30.0)
        )
        try:
            server = tls_listener.accept(timeout=5)
            client.send(b"before the portal")
            assert server.recv(timeout=5) == b"before the portal"
            proxy.portal.set()
            proxy.cut()
            wait_for(lambda: proxy.portal_answers >= 3, 20, "three reconnects answered by the portal")
            assert client.state is rt.ChannelState.DISCONNECTED  # waiting, not failed
            proxy.portal.clear()
            wait_for(lambda: client.statistics().resumes >= 1, 20, "the resume once the portal is gone")
            client.send(b"after the portal")
            assert server.recv(timeout=5) == b"after the portal"
            assert client.statistics().failed_attempts >= 3
            client.close()
            server.close()
        finally:
            client.abort()


def test_a_hello_that_arrives_with_the_tls_finished_is_answered_at_once(pki: Path, front: Any) -> None:
    """Issue 25, item 5: through a path that coalesces the client's bytes,
    its TLS Finished and its HELLO arrive in one read. The listener must
    answer at once, not wait for a read that never comes (the threaded one
    did, until its handshake timeout)."""
    from reliable_tcp.core import frames as f

    options = fast_options(handshake_timeout=30.0)
    with front.listen(("127.0.0.1", 0), ssl_context=server_context(pki), **options) as listener:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client_context(pki).wrap_bio(incoming, outgoing, server_hostname="localhost")
        with socket.create_connection(listener.address, timeout=10) as sock:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if outgoing.pending:
                        sock.sendall(outgoing.read())
                    data = sock.recv(65536)
                    assert data, "the listener closed during the TLS handshake"
                    incoming.write(data)
            # Our side is done; its Finished still waits in `outgoing`: it
            # leaves in one write with the HELLO.
            tls.write(f.encode(f.Hello(False, bytes(16), bytes(16), 1)))
            sock.sendall(outgoing.read())
            sock.settimeout(5.0)  # far below the listener's 30 s handshake timeout
            decoder = f.FrameDecoder(1 << 20)
            frames: list[f.Frame] = []
            while not frames:
                data = sock.recv(65536)
                assert data, "the listener closed without answering"
                incoming.write(data)
                try:
                    frames = decoder.feed(tls.read(65536))
                except ssl.SSLWantReadError:
                    continue  # a session ticket, or part of a record
            assert isinstance(frames[0], f.Accept)
