"""Pre-shared-key authentication through the API and rtcat."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import reliable_tcp as rt
from helpers import fast_options, free_port, wait_for
from reliable_tcp.core import frames as f
from reliable_tcp.core.auth import load_psk, parse_psk
from reliable_tcp.testing import FaultProxy

KEY = b"k" * 32
OTHER = b"o" * 32


def test_sessions_with_the_key_work_and_resume() -> None:
    with rt.listen(("127.0.0.1", 0), psk=KEY, **fast_options()) as listener, FaultProxy(listener.address) as proxy:
        client = rt.connect(proxy.address, psk=KEY, **fast_options())
        server = listener.accept(timeout=5)
        client.send(b"authenticated")
        assert server.recv(timeout=5) == b"authenticated"
        proxy.reset()
        wait_for(lambda: client.statistics().resumes == 1, 10, "an authenticated resume")
        client.send(b"still authenticated")
        assert server.recv(timeout=5) == b"still authenticated"
        client.close()
        server.close()


@pytest.mark.parametrize(("client_key", "server_key"), [(OTHER, KEY), (None, KEY), (KEY, None)],
                         ids=["wrong-key", "client-without-key", "server-without-key"])
def test_a_missing_or_wrong_key_gets_no_session(client_key: bytes | None, server_key: bytes | None) -> None:
    with rt.listen(("127.0.0.1", 0), psk=server_key, **fast_options()) as listener:
        # No session ever existed: the typed refusal itself, at once, not a "lost" session.
        with pytest.raises((rt.AuthenticationFailed, rt.RejectedByPeer)) as info:
            rt.connect(listener.address, psk=client_key, timeout=5, **fast_options())
        assert isinstance(info.value, rt.AuthenticationFailed) or info.value.reason is f.RejectReason.AUTH_FAILED
        with pytest.raises(TimeoutError):
            listener.accept(timeout=0.2)


def test_the_key_never_crosses_the_wire_and_a_recorded_handshake_is_useless() -> None:
    with rt.listen(("127.0.0.1", 0), psk=KEY, **fast_options()) as listener:
        sock = socket.create_connection(listener.address, timeout=5)
        hello = f.encode(f.Hello(False, bytes(16), bytes(16), 1, os.urandom(16)))
        sock.sendall(hello)
        data = sock.recv(4096)
        assert KEY not in data
        (challenge,) = f.FrameDecoder(4096).feed(data)
        assert isinstance(challenge, f.Challenge)
        # Answering with a proof recorded from another handshake (another server nonce) fails.
        sock.sendall(f.encode(f.Proof(os.urandom(32))))
        rest = b""
        while chunk := sock.recv(4096):
            rest += chunk
        (reject,) = f.FrameDecoder(4096).feed(rest)
        assert isinstance(reject, f.Reject) and reject.reason is f.RejectReason.AUTH_FAILED
        sock.close()


def test_load_psk_from_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "key.hex").write_text(KEY.hex() + "\n")
    assert load_psk(path=str(tmp_path / "key.hex")) == KEY
    (tmp_path / "key.prefixed").write_text("hex:" + KEY.hex())
    assert load_psk(path=str(tmp_path / "key.prefixed")) == KEY
    monkeypatch.setenv("RTCP_TEST_KEY", "base64:" + base64.b64encode(b"raw-key-material-long-enough").decode())
    assert load_psk(env="RTCP_TEST_KEY") == b"raw-key-material-long-enough"
    with pytest.raises(ValueError, match="at least"):
        monkeypatch.setenv("RTCP_TEST_KEY", "00" * 15)
        load_psk(env="RTCP_TEST_KEY")


@pytest.mark.parametrize(
    "text",
    [
        "raw-key-material-long-enough",  # was read as raw bytes: now neither format, a clear error
        "abc",  # an odd number of hex digits
        "base64:not base64!",
        "0123456789abcdef0123456789abcdeg",
    ],
)
def test_a_key_in_neither_format_is_refused_clearly(text: str) -> None:
    with pytest.raises(ValueError, match="neither accepted format"):
        parse_psk(text.encode())


def test_a_hex_only_key_is_never_halved_silently() -> None:
    # Thirty-two hex characters are a 16-byte key, always: there is no raw reading any more.
    assert parse_psk(b"deadbeef" * 4) == bytes.fromhex("deadbeef" * 4)


def test_a_short_key_is_refused_by_the_configuration() -> None:
    with pytest.raises(ValueError):
        rt.SessionConfig(psk=b"short")
    with pytest.raises(ValueError):
        load_psk()


def test_rtcat_with_a_key_file(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32).hex().encode())
    rtcat = [sys.executable, str(Path(__file__).resolve().parents[2] / "tools" / "rtcat"), "--heartbeat", "0.2"]
    port = str(free_port())
    listener = subprocess.Popen([*rtcat, "-l", "127.0.0.1", port, "--psk-file", str(key)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        sent = subprocess.run([*rtcat, "--psk-env", "RTCP_KEY", "127.0.0.1", port], input=b"with a key\n",
                              capture_output=True, timeout=60, env={**os.environ, "RTCP_KEY": key.read_text()})
        assert sent.returncode == 0, sent.stderr
        out, _ = listener.communicate(timeout=30)
        assert out == b"with a key\n"
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
