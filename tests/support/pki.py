"""A throwaway certificate authority for tests, made with the openssl command.

``make_pki(directory)`` writes ca.pem, server.pem/.key (for 127.0.0.1 and
localhost), client.pem/.key (client auth) and other.pem (an unrelated CA).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["OPENSSL", "make_pki"]

OPENSSL = shutil.which("openssl")

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None, "needs the openssl command"
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path) -> Path:
    """Write the test CA and its certificates into ``directory``; return it."""
    _openssl("req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=rtcp test CA",
             cwd=directory)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=rtcp {name}", cwd=directory)
        (directory / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=directory)
    _openssl("req", "-x509", *_EC, "-keyout", "other.key", "-out", "other.pem", "-days", "2", "-subj", "/CN=someone else",
             cwd=directory)
    return directory
