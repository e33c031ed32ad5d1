"""The proxy handshake without sockets: URLs, the environment, HTTP CONNECT
and SOCKS5 answers fed byte by byte, refusals and what they mean."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reliable_tcp.common.backoff import is_retryable
from reliable_tcp.common.proxies import Proxy, ProxyHandshake, choose_proxy, parse_proxy, proxy_from_environment
from reliable_tcp.exceptions import ProxyError, UsageError

HTTP = Proxy("http", "proxy.example", 3128)
SOCKS = Proxy("socks5", "proxy.example", 1080)
SOCKS_USER = Proxy("socks5", "proxy.example", 1080, "alice", "s3cret")


def run(handshake: ProxyHandshake, answer: bytes, pieces: st.DataObject | None = None) -> tuple[bytes, bytes]:
    """Play the front's loop against a proxy that answers ``answer`` (all of
    it, whatever was asked); return what was sent, and what was left unread."""
    sent = bytearray(handshake.data_to_send())
    while not handshake.done:
        wanted = handshake.bytes_wanted()
        assert wanted > 0
        size = wanted if pieces is None else pieces.draw(st.integers(1, wanted))
        chunk, answer = answer[:size], answer[size:]
        handshake.receive(chunk)
        sent += handshake.data_to_send()
    return bytes(sent), answer


# -- URLs and the environment -------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://proxy.example:3128", Proxy("http", "proxy.example", 3128)),
        ("http://proxy.example", Proxy("http", "proxy.example", 80)),
        ("HTTP://u:p%40ss@proxy.example:8080/", Proxy("http", "proxy.example", 8080, "u", "p@ss")),
        ("socks5://proxy.example", Proxy("socks5", "proxy.example", 1080)),
        ("socks5h://u:pw@[::1]:1081", Proxy("socks5", "::1", 1081, "u", "pw")),
        ("http://user@proxy.example:1", Proxy("http", "proxy.example", 1, "user", "")),
    ],
)
def test_proxy_urls_are_parsed(url: str, expected: Proxy) -> None:
    assert parse_proxy(url) == expected


@pytest.mark.parametrize(
    "url",
    ["https://u:topsecret@proxy:443", "socks4://u:topsecret@proxy", "proxy:3128", "http://u:topsecret@", "http://h:99999",
     "http://u:topsecret@h:1/path", f"socks5://{'u' * 256}:topsecret@h"],
)
def test_a_proxy_url_that_cant_be_used_is_a_usage_error_that_hides_the_password(url: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse_proxy(url)
    assert "topsecret" not in str(raised.value)


def test_a_proxy_shows_no_password() -> None:
    proxy = parse_proxy("http://alice:topsecret@[::1]:3128")
    assert str(proxy) == "http://alice:***@[::1]:3128"
    assert "topsecret" not in repr(proxy)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"https_proxy": "http://a:1"}, "http://a:1"),
        ({"HTTPS_PROXY": "http://a:1"}, "http://a:1"),
        ({"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:1"}, "http://lower:1"),
        ({"all_proxy": "socks5://a:1"}, "socks5://a:1"),
        ({"ALL_PROXY": "socks5://a:1", "https_proxy": "http://b:2"}, "http://b:2"),
        ({"http_proxy": "http://a:1"}, None),  # a proxy for plain HTTP requests only
        ({"https_proxy": "http://a:1", "no_proxy": "*"}, None),
        ({"https_proxy": "http://a:1", "no_proxy": "other.example, chat.example.com"}, None),
        ({"https_proxy": "http://a:1", "NO_PROXY": ".example.com"}, None),
        ({"https_proxy": "http://a:1", "no_proxy": "example.com"}, None),  # a name covers its subdomains
        ({"https_proxy": "http://a:1", "no_proxy": "ample.com"}, "http://a:1"),  # but not a name it merely ends
        ({"https_proxy": "http://a:1", "no_proxy": "chat.example.com:9001"}, "http://a:1"),  # another port
        ({"https_proxy": "http://a:1", "no_proxy": "chat.example.com:9000"}, None),
    ],
)
def test_the_environment_names_the_proxy_for_a_host(environ: dict[str, str], expected: str | None) -> None:
    chosen = proxy_from_environment("chat.example.com", 9000, environ)
    assert chosen == (parse_proxy(expected) if expected else None)


@pytest.mark.parametrize(
    ("host", "no_proxy", "bypassed"),
    [("10.1.2.3", "10.0.0.0/8", True), ("11.1.2.3", "10.0.0.0/8", False), ("::1", "::1", True),
     ("[::1]", "[::1]:9000", True), ("192.168.1.5", "192.168.1.5", True), ("example.com", "10.0.0.0/8", False)],
)
def test_no_proxy_takes_addresses_and_networks(host: str, no_proxy: str, bypassed: bool) -> None:
    environ = {"all_proxy": "socks5://a:1", "no_proxy": no_proxy}
    assert (proxy_from_environment(host, 9000, environ) is None) is bypassed


def test_false_dials_directly_whatever_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    assert choose_proxy(False, "h", 1) is None
    assert choose_proxy(None, "h", 1) == HTTP
    assert choose_proxy("socks5://proxy.example", "h", 1) == SOCKS
    with pytest.raises(UsageError):
        choose_proxy(True, "h", 1)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="too long"):
        choose_proxy("socks5://proxy.example", "x" * 256, 1)  # fails at connect(), not in the reconnect loop


# -- HTTP CONNECT -------------------------------------------------------------


@given(st.data(), st.binary(max_size=50), st.sampled_from([b"", b"Proxy-agent: x\r\nX-A: \r\n"]))
def test_a_connect_tunnel_opens_and_no_byte_after_the_answer_is_read(data: st.DataObject, after: bytes, headers: bytes) -> None:
    handshake = ProxyHandshake(Proxy("http", "p", 1, "alice", "s3cret"), "listener.example", 9000)
    answer = b"HTTP/1.1 200 Connection established\r\n" + headers + b"\r\n"
    sent, unread = run(handshake, answer + after, data)
    credentials = base64.b64encode(b"alice:s3cret")
    assert sent == (b"CONNECT listener.example:9000 HTTP/1.1\r\nHost: listener.example:9000\r\n"
                    b"Proxy-Authorization: Basic " + credentials + b"\r\n\r\n")
    assert unread == after
    assert handshake.bytes_wanted() == 0


def test_an_ipv6_listener_is_bracketed_in_the_request() -> None:
    sent, _ = run(ProxyHandshake(HTTP, "::1", 9000), b"HTTP/1.0 200 OK\r\n\r\n")
    assert sent.startswith(b"CONNECT [::1]:9000 HTTP/1.1\r\nHost: [::1]:9000\r\n\r\n")


@pytest.mark.parametrize(
    ("status_line", "transient"),
    [(b"HTTP/1.0 407 Proxy Authentication Required", False), (b"HTTP/1.1 403 Forbidden", False),
     (b"HTTP/1.1 502 Bad Gateway", True), (b"HTTP/1.1 500 Unable to connect", True), (b"HTTP/1.1 504 Gateway Timeout", True)],
)
def test_a_refusal_names_the_proxys_answer_and_whether_to_try_again(status_line: bytes, transient: bool) -> None:
    handshake = ProxyHandshake(Proxy("http", "p", 1, "alice", "topsecret"), "h", 1)
    with pytest.raises(ProxyError) as raised:
        run(handshake, status_line + b"\r\nContent-Length: 3\r\n\r\nabc")
    error = raised.value
    assert error.answer == status_line.decode()
    assert error.transient is transient
    assert error.proxy == "http://alice:***@p:1"
    assert "topsecret" not in str(error)
    assert isinstance(error, ConnectionError)
    assert is_retryable(error) is transient  # before the first session
    assert is_retryable(error, reconnect=True)  # the same proxy let us through before


@pytest.mark.parametrize(
    "answer",
    [b"SSH-2.0-OpenSSH_9.2\r\n\r\n", b"HTTP/1.1 2000 what\r\n\r\n", b"\x05\x00\r\n\r\n", b"x" * 20_000],
    ids=["ssh", "four-digit-status", "socks", "endless"],
)
def test_something_that_is_not_an_http_proxy_is_a_final_error(answer: bytes) -> None:
    with pytest.raises(ProxyError) as raised:
        run(ProxyHandshake(HTTP, "h", 1), answer)
    assert not raised.value.transient


def test_a_proxy_that_closes_before_answering_is_worth_another_try() -> None:
    handshake = ProxyHandshake(HTTP, "h", 1)
    handshake.data_to_send()
    handshake.receive(b"HTTP/1.1 200")
    with pytest.raises(ProxyError) as raised:
        handshake.receive(b"")
    assert raised.value.transient


# -- SOCKS5 -------------------------------------------------------------------


def socks_reply(code: int = 0, bound: bytes = b"\x01\x7f\x00\x00\x01") -> bytes:
    return bytes([5, code, 0]) + bound + b"\x1f\x90"


@given(st.data(), st.binary(max_size=30),
       st.sampled_from([b"\x01\x7f\x00\x00\x01", b"\x04" + bytes(16), b"\x03\x0bproxy.local", b"\x03\x00"]))
def test_a_socks5_tunnel_opens_and_no_byte_after_the_reply_is_read(data: st.DataObject, after: bytes, bound: bytes) -> None:
    handshake = ProxyHandshake(SOCKS, "listener.example", 9000)
    sent, unread = run(handshake, b"\x05\x00" + socks_reply(0, bound) + after, data)
    assert sent == b"\x05\x01\x00" + b"\x05\x01\x00\x03\x10listener.example\x23\x28"
    assert unread == after


@pytest.mark.parametrize(
    ("host", "address"),
    [("127.0.0.1", b"\x01\x7f\x00\x00\x01"), ("[::1]", b"\x04" + bytes(15) + b"\x01"), ("::1", b"\x04" + bytes(15) + b"\x01")],
)
def test_an_address_goes_to_a_socks5_proxy_as_an_address(host: str, address: bytes) -> None:
    sent, _ = run(ProxyHandshake(SOCKS, host, 9000), b"\x05\x00" + socks_reply())
    assert sent == b"\x05\x01\x00" + b"\x05\x01\x00" + address + b"\x23\x28"


def test_socks5_credentials_are_offered_and_sent() -> None:
    sent, _ = run(ProxyHandshake(SOCKS_USER, "h", 1), b"\x05\x02" + b"\x01\x00" + socks_reply())
    assert sent == b"\x05\x02\x00\x02" + b"\x01\x05alice\x06s3cret" + b"\x05\x01\x00\x03\x01h\x00\x01"


def test_a_socks5_proxy_that_needs_no_credentials_is_not_sent_them() -> None:
    sent, _ = run(ProxyHandshake(SOCKS_USER, "h", 1), b"\x05\x00" + socks_reply())
    assert b"s3cret" not in sent


@pytest.mark.parametrize(
    ("proxy", "answer", "transient", "says"),
    [
        (SOCKS_USER, b"\x05\x02\x01\x01", False, "user name and password refused"),
        (SOCKS, b"\x05\xff", False, "no acceptable authentication method"),
        (SOCKS_USER, b"\x05\xff", False, "no acceptable authentication method"),
        (SOCKS, b"\x05\x02", False, "not offered"),
        (SOCKS, b"\x04\x00", False, "not a SOCKS5 proxy"),
        (SOCKS, b"\x05\x00" + socks_reply(0x05), True, "0x05: connection refused"),
        (SOCKS, b"\x05\x00" + socks_reply(0x04), True, "host unreachable"),
        (SOCKS, b"\x05\x00" + socks_reply(0x02), False, "not allowed by ruleset"),
        (SOCKS, b"\x05\x00" + socks_reply(0x09), False, "unknown failure"),
        (SOCKS, b"\x05\x00" + socks_reply(0, b"\x07\x00"), False, "address type 7"),
    ],
)
def test_a_socks5_refusal_says_which(proxy: Proxy, answer: bytes, transient: bool, says: str) -> None:
    with pytest.raises(ProxyError, match=says) as raised:
        run(ProxyHandshake(proxy, "h", 1), answer)
    assert raised.value.transient is transient
