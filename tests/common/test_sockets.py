"""Socket facts the shell relies on, checked on this kernel, and the error map."""

from __future__ import annotations

import errno
import socket
import ssl
import struct
import threading

import pytest

from reliable_tcp.common.sockets import close_socket, configure_socket, has_pending_input, link_error_reason, probe_pending_error
from reliable_tcp.common.backoff import Backoff, is_retryable
from reliable_tcp.core.config import SessionConfig
from reliable_tcp.exceptions import TLSHandshakeError


def pair() -> tuple[socket.socket, socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    with server:
        client = socket.create_connection(server.getsockname()[:2])
        accepted, _ = server.accept()
    return client, accepted


def test_zero_byte_probe_sees_a_reset_but_not_a_fin() -> None:
    client, peer = pair()
    assert probe_pending_error(client) is None  # healthy
    peer.shutdown(socket.SHUT_WR)
    assert client.recv(1) == b""
    assert probe_pending_error(client) is None  # a FIN is invisible to the probe
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # RST
    try:
        client.sendall(b"x")  # the RST may already have arrived, or answer this
    except OSError:
        pass
    for _ in range(50):
        error = probe_pending_error(client)
        if error is not None:
            break
        threading.Event().wait(0.01)
    assert isinstance(error, (ConnectionResetError, BrokenPipeError))
    client.close()


def test_shutdown_wakes_a_blocked_recv() -> None:
    client, peer = pair()
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(client.recv(10)))
    reader.start()
    # shutdown (what close_socket does first) wakes a blocked recv with b"",
    # and a recv that starts after it returns b"" too, so this has no race.
    client.shutdown(socket.SHUT_RDWR)
    reader.join(2)
    assert not reader.is_alive() and result == [b""]
    close_socket(client)
    peer.close()


def test_abort_makes_the_peer_see_a_reset() -> None:
    client, peer = pair()
    close_socket(client, abort=True)
    with pytest.raises(ConnectionResetError):
        peer.recv(1)
    peer.close()


def test_socket_options_follow_the_heartbeat() -> None:
    client, peer = pair()
    configure_socket(client, SessionConfig(heartbeat_interval=2.0, dead_after=7.0))
    assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    if hasattr(socket, "TCP_KEEPIDLE"):
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 2
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        # Left at the kernel's default: it would cut off a live peer that merely stopped reading.
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 0
    client.close()
    peer.close()


@pytest.mark.parametrize(
    ("exc", "link_lost"),
    [
        (ConnectionResetError(errno.ECONNRESET, "reset"), True),
        (BrokenPipeError(errno.EPIPE, "pipe"), True),
        (TimeoutError(errno.ETIMEDOUT, "kernel gave up"), True),
        (TimeoutError("our own settimeout"), False),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), True),
        (OSError(errno.EHOSTUNREACH, "unreachable"), True),
        (OSError(errno.ENETUNREACH, "unreachable"), True),
        (ValueError("not a socket error"), False),
    ],
)
def test_error_map(exc: BaseException, link_lost: bool) -> None:
    assert (link_error_reason(exc) is not None) is link_lost


def test_backoff_grows_with_jitter_and_caps() -> None:
    import random

    delays = Backoff(initial=0.1, maximum=1.0, jitter=0.5).delays(random.Random(1))
    values = [next(delays) for _ in range(10)]
    assert 0.05 <= values[0] <= 0.1
    assert all(0.5 <= v <= 1.0 for v in values[5:])
    assert Backoff(jitter=0).delays().__next__() == Backoff().initial
    with pytest.raises(ValueError):
        Backoff(initial=0)


def test_the_default_backoff_spreads_clients_cut_at_once_over_the_whole_interval() -> None:
    """Issue 29, item 2: full jitter. 2,000 clients (each its own random
    source) draw their first and their seventh delay: both spread from near
    zero to the ceiling, about uniformly, instead of bunching in its upper
    half as ``jitter=0.5`` did."""
    import random

    backoff = Backoff()
    assert backoff.jitter == 1.0
    series = [backoff.delays(random.Random(client)) for client in range(2000)]
    first = [next(delays) for delays in series]
    for _ in range(5):
        for delays in series:
            next(delays)
    seventh = [next(delays) for delays in series]  # 0.05 s doubled six times: at the 2 s cap
    for delays_drawn, ceiling in ((first, backoff.initial), (seventh, backoff.maximum)):
        assert all(0 <= d <= ceiling for d in delays_drawn)
        quarters = [sum(q * ceiling / 4 <= d < (q + 1) * ceiling / 4 for d in delays_drawn) for q in range(4)]
        assert all(400 <= n <= 600 for n in quarters), quarters  # 500 each, give or take chance
    old = [next(Backoff(jitter=0.5).delays(random.Random(client))) for client in range(2000)]
    assert min(old) >= backoff.initial / 2  # what the default was: nobody came back in the first half


def test_retryable_errors() -> None:
    assert is_retryable(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert is_retryable(TimeoutError())
    assert not is_retryable(socket.gaierror(socket.EAI_NONAME, "no such host"))
    assert is_retryable(socket.gaierror(socket.EAI_AGAIN, "try again"))
    assert not is_retryable(ValueError())


def test_on_a_reconnect_every_resolution_failure_is_transient() -> None:
    """The name resolved before: an offline resolver's "no such name"
    (airplane mode) must not end a session inside its resume window."""
    for code in (socket.EAI_NONAME, socket.EAI_AGAIN, socket.EAI_FAIL):
        assert is_retryable(socket.gaierror(code, "offline"), reconnect=True)
    assert not is_retryable(ValueError(), reconnect=True)


def test_pending_input_is_seen_without_being_taken() -> None:
    client, peer = pair()
    assert not has_pending_input(client)
    peer.sendall(b"alive")
    for _ in range(100):
        if has_pending_input(client):
            break
        threading.Event().wait(0.01)
    assert has_pending_input(client)
    assert client.recv(10) == b"alive"  # nothing was consumed by the peek
    assert not has_pending_input(client)
    peer.close()
    client.recv(10)  # the FIN
    assert not has_pending_input(client)  # end of stream is not life
    client.close()


def test_a_failed_tls_handshake_is_final_first_and_transient_on_a_reconnect() -> None:
    """The same server passed the handshake before: a garbled one on a
    reconnect is a captive portal or a middlebox, not a certificate."""
    garbled = TLSHandshakeError("TLS handshake failed: [SSL: WRONG_VERSION_NUMBER] wrong version number")
    garbled.__cause__ = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    cut_short = TLSHandshakeError("connection closed during the TLS handshake")
    for error in (garbled, cut_short, ssl.SSLError(1, "record layer failure")):
        assert not is_retryable(error)
        assert is_retryable(error, reconnect=True)
