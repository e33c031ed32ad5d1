"""Pre-shared-key authentication: the HMAC challenge-response of the handshake.

Both sides prove they hold the key without sending it: the client's HELLO
carries a fresh nonce, the server answers with its own fresh nonce and
HMAC-SHA256(key, "rtcp-v1 server" | client nonce | server nonce), and the
client answers with HMAC-SHA256(key, "rtcp-v1 client" | server nonce |
client nonce | HELLO frame). Fresh nonces on both sides mean a recorded
handshake can't be replayed, and the client's proof covers the HELLO it
sent, so its fields can't be altered on the way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import string

__all__ = ["server_proof", "client_proof", "proofs_match", "load_psk", "parse_psk", "MIN_PSK_SIZE"]

#: Keys shorter than this are refused: 128 bits of secret at least.
MIN_PSK_SIZE = 16


def server_proof(key: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """The server's proof that it holds ``key``."""
    return hmac.new(key, b"rtcp-v1 server" + client_nonce + server_nonce, hashlib.sha256).digest()


def client_proof(key: bytes, server_nonce: bytes, client_nonce: bytes, hello_frame: bytes) -> bytes:
    """The client's proof that it holds ``key``, bound to the HELLO it sent."""
    return hmac.new(key, b"rtcp-v1 client" + server_nonce + client_nonce + hello_frame, hashlib.sha256).digest()


def proofs_match(expected: bytes, presented: bytes) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(expected, presented)


def load_psk(path: str | None = None, env: str | None = None) -> bytes:
    """Read a pre-shared key from a file or an environment variable (never a
    command-line argument, which other users can see in the process list).

    The text (surrounding whitespace ignored) must be one of two explicit
    formats, so that no key is ever read two ways:

    - hex digits, an even number of them, optionally after ``hex:``
      (``openssl rand -hex 32``);
    - ``base64:`` and standard base64 (``openssl rand -base64 32``, prefixed).

    The decoded key must be at least 16 bytes. Anything else raises
    ValueError saying which formats are accepted.
    """
    if (path is None) == (env is None):
        raise ValueError("give exactly one of a key file or an environment variable")
    if path is not None:
        with open(path, "rb") as f:
            raw = f.read()
        where = f"key file {path}"
    else:
        assert env is not None
        value = os.environ.get(env)
        if value is None:
            raise ValueError(f"environment variable {env} is not set")
        raw = value.encode()
        where = f"environment variable {env}"
    return parse_psk(raw, where)


def parse_psk(raw: bytes, where: str = "the key") -> bytes:
    """Decode key text in one of the formats of :func:`load_psk`."""
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not text; {_FORMATS}") from None
    try:
        if text.startswith("base64:"):
            key = base64.b64decode(text[len("base64:") :].strip(), validate=True)
        else:
            digits = text[len("hex:") :] if text.startswith("hex:") else text
            if len(digits) % 2 or not all(c in string.hexdigits for c in digits):
                raise ValueError
            key = bytes.fromhex(digits)
    except (ValueError, binascii.Error):
        raise ValueError(f"{where} is in neither accepted format; {_FORMATS}") from None
    if len(key) < MIN_PSK_SIZE:
        raise ValueError(f"the pre-shared key in {where} must be at least {MIN_PSK_SIZE} bytes, got {len(key)}")
    return key


_FORMATS = "write it as hex digits (openssl rand -hex 32) or as 'base64:' and base64"
