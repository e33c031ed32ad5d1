"""Reaching the listener through an HTTP CONNECT or a SOCKS5 proxy, sans I/O.

Both fronts dial the proxy instead of the listener, then run a
:class:`ProxyHandshake` over that connection: it says what to write and
how many bytes to read next, and it never asks for a byte beyond the
proxy's answer, so whatever follows belongs to the session (TLS, when
used, runs end to end over the tunnel). The handshake decides every
question (what a refusal means, whether it is worth another try); the
fronts only move its bytes.

Which proxy: :func:`choose_proxy` takes the ``proxy=`` argument of
``connect``: a URL, ``False`` (dial directly), or ``None``, which reads the
standard environment variables (docs/guide.md, "Through a proxy").
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from ..exceptions import ProxyError, UsageError

__all__ = ["Proxy", "ProxyHandshake", "choose_proxy", "parse_proxy", "proxy_from_environment"]

#: Default ports, as curl and urllib3 use them.
_DEFAULT_PORTS = {"http": 80, "socks5": 1080, "socks5h": 1080}

#: An HTTP proxy's answer longer than this is refused rather than buffered.
MAX_HTTP_ANSWER = 16 * 1024

_HEADER_END = b"\r\n\r\n"

#: SOCKS5 reply codes (RFC 1928, section 6) and whether a later try may succeed.
_SOCKS_REPLIES = {
    0x01: ("general SOCKS server failure", True),
    0x02: ("connection not allowed by ruleset", False),
    0x03: ("network unreachable", True),
    0x04: ("host unreachable", True),
    0x05: ("connection refused", True),
    0x06: ("TTL expired", True),
    0x07: ("command not supported", False),
    0x08: ("address type not supported", False),
}


@dataclass(frozen=True, slots=True)
class Proxy:
    """A proxy to dial through: ``kind`` "http" (CONNECT) or "socks5"."""

    kind: Literal["http", "socks5"]
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        """The URL without the password, fit for logs and errors."""
        user = f"{urllib.parse.quote(self.username)}:***@" if self.username is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind}://{user}{host}:{self.port}"

    def __repr__(self) -> str:
        return f"Proxy({str(self)!r})"


def parse_proxy(url: str) -> Proxy:
    """The proxy a URL names: ``http://[user:pass@]host[:port]`` or
    ``socks5://`` (also ``socks5h://``: the proxy resolves the listener's
    name either way). Raises UsageError for anything else."""
    shown = _without_password(url)
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"not a proxy URL: {shown!r} ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise UsageError(f"proxy {shown!r}: only http://, socks5:// and socks5h:// proxies are supported")
    if not parts.hostname:
        raise UsageError(f"proxy {shown!r} names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(f"proxy {shown!r}: a proxy URL is scheme://[user:pass@]host[:port], nothing after")
    username = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    if username is not None and password is None:
        password = ""
    # RFC 1929 carries each in one length byte.
    socks_credentials_fit = username is None or (0 < len(username.encode()) <= 255 and len((password or "").encode()) <= 255)
    if scheme != "http" and not socks_credentials_fit:
        raise UsageError(f"proxy {shown!r}: a SOCKS5 user name must be 1-255 bytes and a password at most 255")
    kind: Literal["http", "socks5"] = "http" if scheme == "http" else "socks5"
    return Proxy(kind, parts.hostname, port if port is not None else _DEFAULT_PORTS[scheme], username, password)


def proxy_from_environment(host: str, port: int, environ: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy the environment asks for to reach ``host:port``, or None.

    ``https_proxy`` (the proxy for connections that tunnel through
    CONNECT), else ``all_proxy``; each in lower case first, then upper case,
    as curl and urllib read them. ``no_proxy`` lists the hosts reached
    directly: ``*``, a name (which also covers its subdomains; a leading dot
    is allowed), an IP address or network (``10.0.0.0/8``), each optionally
    with ``:port``. ``http_proxy`` is not read: it names a proxy for plain
    HTTP requests, which this protocol is not.
    """
    env = os.environ if environ is None else environ
    url = _variable(env, "https_proxy") or _variable(env, "all_proxy")
    if not url or _bypassed(host, port, _variable(env, "no_proxy")):
        return None
    return parse_proxy(url)


def choose_proxy(proxy: str | Literal[False] | None, host: str, port: int) -> Proxy | None:
    """The proxy a ``connect(proxy=...)`` argument means for ``host:port``."""
    if proxy is False:
        return None
    if proxy is None:
        chosen = proxy_from_environment(host, port)
    elif isinstance(proxy, str):
        chosen = parse_proxy(proxy)
    else:
        raise UsageError(f"proxy must be a URL, False or None, not {proxy!r}")
    if chosen is not None and chosen.kind == "socks5":
        _socks_address(host)  # a name SOCKS5 can't carry fails here, not in the reconnect loop
    return chosen


def _without_password(url: str) -> str:
    """``url`` fit for an error message: a password in it replaced by ``***``."""
    return re.sub(r"(//[^/@]*?:)[^/@]*@", r"\1***@", url)


def _variable(env: Mapping[str, str], name: str) -> str:
    return (env.get(name) or env.get(name.upper()) or "").strip()


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    name = host.strip("[]").lower().rstrip(".")
    for entry in no_proxy.replace(",", " ").split():
        entry = entry.lower()
        if entry == "*":
            return True
        pattern, wanted_port = _split_port(entry)
        if wanted_port is not None and wanted_port != port:
            continue
        if _matches(name, pattern):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [v6]:port or [v6]
        address, _, rest = entry[1:].partition("]")
        return address, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        pattern, _, port = entry.partition(":")
        if port.isdigit():
            return pattern, int(port)
    return entry, None


def _matches(name: str, pattern: str) -> bool:
    try:
        network = ipaddress.ip_network(pattern, strict=False)
    except ValueError:
        suffix = pattern.lstrip("*").lstrip(".").rstrip(".")
        return bool(suffix) and (name == suffix or name.endswith("." + suffix))
    try:
        return ipaddress.ip_address(name) in network
    except ValueError:
        return False  # a name never matches an address: nothing is resolved here


def _socks_address(host: str) -> bytes:
    """The listener's address as a SOCKS5 request carries it: an IP address
    as such, a name as a name, which the proxy resolves."""
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            name = host.encode("idna")
        except UnicodeError as exc:
            raise UsageError(f"host name {host!r} can't be sent to a SOCKS5 proxy: {exc}") from None
        if not 0 < len(name) <= 255:
            raise UsageError(f"host name {host!r} is too long for SOCKS5 (255 bytes at most)") from None
        return b"\x03" + bytes([len(name)]) + name
    return (b"\x01" if address.version == 4 else b"\x04") + address.packed


class ProxyHandshake:
    """Opens a tunnel to ``host:port`` through ``proxy``, sans I/O.

    The front writes :meth:`data_to_send`, then reads at most
    :meth:`bytes_wanted` bytes and hands them to :meth:`receive` (an empty
    ``bytes`` for the proxy's EOF), until :attr:`done`. :meth:`receive`
    raises :class:`~reliable_tcp.exceptions.ProxyError` when the proxy
    refuses or does not speak its protocol.
    """

    def __init__(self, proxy: Proxy, host: str, port: int) -> None:
        self.proxy = proxy
        self._host = host.strip("[]")
        self._port = port
        self._out = bytearray()
        self._answer = bytearray()
        self._wanted = 0
        self._step: Callable[[], None]
        self.done = False
        if proxy.kind == "http":
            self._out += self._connect_request()
            self._step = self._http_answer
            self._wanted = len(_HEADER_END)
        else:
            methods = b"\x00\x02" if proxy.username is not None else b"\x00"
            self._out += bytes([5, len(methods)]) + methods
            self._step = self._socks_method
            self._wanted = 2

    def data_to_send(self) -> bytes:
        """What to write to the proxy now (maybe nothing)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def bytes_wanted(self) -> int:
        """How many bytes to read at most next; 0 once done. Reading no more
        than this never takes a byte that follows the proxy's answer."""
        return 0 if self.done else self._wanted - len(self._answer)

    def receive(self, data: bytes) -> None:
        """Bytes the proxy sent (at most :meth:`bytes_wanted`); ``b""`` is its EOF."""
        if not data:
            raise self._error("closed the connection before it answered", transient=True)
        self._answer += data
        if len(self._answer) >= self._wanted:
            self._step()

    def _error(self, answer: str, *, transient: bool) -> ProxyError:
        return ProxyError(str(self.proxy), answer, transient=transient)

    # -- HTTP CONNECT (RFC 9110, section 9.3.6) -----------------------------

    def _connect_request(self) -> bytes:
        target = f"[{self._host}]:{self._port}" if ":" in self._host else f"{self._host}:{self._port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if self.proxy.username is not None:
            credentials = f"{self.proxy.username}:{self.proxy.password or ''}".encode()
            lines.append("Proxy-Authorization: Basic " + base64.b64encode(credentials).decode("ascii"))
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _http_answer(self) -> None:
        if self._answer.endswith(_HEADER_END):
            self._http_status()
            return
        if len(self._answer) >= MAX_HTTP_ANSWER:
            raise self._error(f"an answer longer than {MAX_HTTP_ANSWER} bytes", transient=False)
        # Read only as far as the header's end can be: the longest tail of
        # what we hold that begins "\r\n\r\n" is already part of it.
        held = next(n for n in range(len(_HEADER_END) - 1, -1, -1) if self._answer.endswith(_HEADER_END[:n]))
        self._wanted = len(self._answer) + len(_HEADER_END) - held

    def _http_status(self) -> None:
        status_line = bytes(self._answer).split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
            raise self._error(f"not an HTTP proxy (it answered {status_line[:80]!r})", transient=False)
        status = int(parts[1])
        if 200 <= status < 300:
            self.done = True
            return
        # 5xx: the proxy could not reach the listener (502, 503, 504; tinyproxy
        # says 500), which a later try may. 4xx: the proxy's decision (403 not
        # allowed, 407 credentials), which won't change by itself.
        raise self._error(status_line.strip()[:200], transient=status >= 500)

    # -- SOCKS5 (RFC 1928) with user name and password (RFC 1929) ------------

    def _socks_method(self) -> None:
        version, method = self._answer[0], self._answer[1]
        if version != 5:
            raise self._error(f"not a SOCKS5 proxy (it answered version {version})", transient=False)
        if method == 0xFF:
            wanted = "without credentials" if self.proxy.username is None else "with a user name and password"
            raise self._error(f"no acceptable authentication method: it refuses clients {wanted}", transient=False)
        if method == 0x02 and self.proxy.username is not None:
            user = self.proxy.username.encode()
            password = (self.proxy.password or "").encode()
            self._out += bytes([1, len(user)]) + user + bytes([len(password)]) + password
            self._next(self._socks_authenticated, 2)
        elif method == 0x00:
            self._socks_request()
        else:
            raise self._error(f"chose authentication method {method}, which was not offered", transient=False)

    def _socks_authenticated(self) -> None:
        if self._answer[1] != 0:
            raise self._error(f"user name and password refused (status {self._answer[1]})", transient=False)
        self._socks_request()

    def _socks_request(self) -> None:
        self._out += b"\x05\x01\x00" + _socks_address(self._host) + self._port.to_bytes(2, "big")
        self._next(self._socks_reply, 5)  # up to the first byte of the bound address

    def _socks_reply(self) -> None:
        version, reply, address_type = self._answer[0], self._answer[1], self._answer[3]
        if version != 5:
            raise self._error(f"not a SOCKS5 reply (version {version})", transient=False)
        if reply != 0:
            text, transient = _SOCKS_REPLIES.get(reply, ("unknown failure", False))
            raise self._error(f"SOCKS5 reply {reply:#04x}: {text}", transient=transient)
        lengths = {1: 4, 4: 16, 3: 1 + self._answer[4]}
        if address_type not in lengths:
            raise self._error(f"a reply with address type {address_type}", transient=False)
        self._wanted = 4 + lengths[address_type] + 2  # header, bound address, bound port
        self._step = self._socks_bound
        if len(self._answer) >= self._wanted:
            self._socks_bound()

    def _socks_bound(self) -> None:
        self.done = True

    def _next(self, step: Callable[[], None], wanted: int) -> None:
        self._answer.clear()
        self._step = step
        self._wanted = wanted
