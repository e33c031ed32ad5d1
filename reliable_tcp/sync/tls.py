"""TLS for the threaded shell, through ``ssl.MemoryBIO``.

An ``ssl.SSLSocket`` would be read by the reader thread while the writer
thread writes to it; OpenSSL does not promise that one SSL object can be
used from two threads at once. So the socket stays a plain TCP socket and
TLS runs on memory buffers under its own small lock: the reader decrypts
what it received, the writer encrypts what it sends, and only the writer
puts ciphertext on the wire, so records leave in order even when reading
produced some (a TLS 1.3 key update answer, say).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

from ..exceptions import TLSHandshakeError

__all__ = ["TLSLayer"]

_CHUNK = 65536


class TLSLayer:
    """One connection's TLS state: handshake, then encrypt and decrypt."""

    def __init__(self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname)
        self._lock = threading.Lock()
        self.closed_by_peer = False

    def handshake(self, sock: socket.socket, timeout: float) -> None:
        """Run the handshake over the (blocking) socket within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._ssl.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            except ssl.SSLError as exc:
                self._flush(sock, deadline)  # send the alert, so the peer learns why
                raise TLSHandshakeError(f"TLS handshake failed: {exc}") from exc
            self._flush(sock, deadline)
            if done:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TLSHandshakeError("TLS handshake timed out")
            try:
                sock.settimeout(remaining)  # inside: a listener closing meanwhile closes the socket (EBADF)
                data = sock.recv(_CHUNK)
            except TimeoutError as exc:
                raise TLSHandshakeError("TLS handshake timed out") from exc
            except OSError as exc:
                raise TLSHandshakeError(f"connection failed during the TLS handshake: {exc}") from exc
            if not data:
                raise TLSHandshakeError("connection closed during the TLS handshake")
            self._incoming.write(data)

    def _flush(self, sock: socket.socket, deadline: float) -> None:
        data = self._outgoing.read()
        if data:
            try:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                sock.sendall(data)
            except OSError as exc:
                raise TLSHandshakeError(f"connection failed during the TLS handshake: {exc}") from exc

    def decrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """Plaintext from received ciphertext (possibly empty: a partial record)."""
        out = []
        with self._lock:
            self._incoming.write(data)
            while True:
                try:
                    chunk = self._ssl.read(_CHUNK)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    self.closed_by_peer = True
                    break
                if not chunk:
                    break
                out.append(chunk)
        return b"".join(out)

    def encrypt(self, data: bytes) -> bytes:
        """Ciphertext for ``data``, preceded by anything reading produced."""
        with self._lock:
            if data:
                self._ssl.write(data)
            return self._outgoing.read()

    @property
    def has_output(self) -> bool:
        """Whether reading produced records that must be sent (the writer sends them)."""
        return self._outgoing.pending > 0
