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

import hashlib
import hmac
import os

__all__ = ["server_proof", "client_proof", "proofs_match", "load_psk", "MIN_PSK_SIZE"]

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

    A key written as hex (64 hex digits, say) is decoded; anything else is
    used as raw bytes, surrounding whitespace removed. Raises ValueError for
    a missing or short key.
    """
    if (path is None) == (env is None):
        raise ValueError("give exactly one of a key file or an environment variable")
    if path is not None:
        with open(path, "rb") as f:
            raw = f.read().strip()
    else:
        assert env is not None
        value = os.environ.get(env)
        if value is None:
            raise ValueError(f"environment variable {env} is not set")
        raw = value.strip().encode()
    try:
        key = bytes.fromhex(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = raw
    if len(key) < MIN_PSK_SIZE:
        raise ValueError(f"the pre-shared key must be at least {MIN_PSK_SIZE} bytes")
    return key
