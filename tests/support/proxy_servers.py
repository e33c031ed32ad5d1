"""Real proxies for tests: tinyproxy (HTTP CONNECT) and dante (SOCKS5).

Each runs as a process the test starts on a loopback port and ends by
its process group (dante forks helpers). ``tunnels_to(port)`` counts the
tunnels the proxy opened to a port, read from its own log, which proves a
session went through it. Dante checks user names and passwords against the
system's password files, so with ``users`` it runs in a mount namespace of
its own where a copy of those files, with the test's users added, is bound
over them: the machine's own files are not touched. That needs root
(``unshare``); tests that need it skip without.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from helpers import free_port, wait_for

TINYPROXY = shutil.which("tinyproxy")
DANTED = shutil.which("danted") or ("/usr/sbin/danted" if os.path.exists("/usr/sbin/danted") else None)
OPENSSL = shutil.which("openssl")
UNSHARE = shutil.which("unshare")

__all__ = ["DANTED", "TINYPROXY", "Dante", "ProxyServer", "Tinyproxy", "can_run_dante_with_users"]


def can_run_dante_with_users() -> bool:
    """Whether dante can check test users here (root, unshare, openssl)."""
    return DANTED is not None and os.geteuid() == 0 and UNSHARE is not None and OPENSSL is not None


class ProxyServer:
    """A proxy process on a loopback port, started, stopped and restarted by the test."""

    scheme = ""

    def __init__(self, directory: Path, users: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.users = users or {}
        self.port = free_port()
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, user: str | None = None, password: str | None = None) -> str:
        """The proxy's URL, with credentials when given."""
        credentials = f"{user}:{password}@" if user is not None else ""
        return f"{self.scheme}://{credentials}127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        """Start the proxy and wait until it accepts connections."""
        assert self.process is None
        self.starts += 1
        with open(self.directory / "stderr.log", "ab") as stderr:
            self.process = subprocess.Popen(self.command(), stdout=stderr, stderr=stderr, start_new_session=True)
        process = self.process

        def ready() -> bool:
            assert process.poll() is None, f"the proxy exited: {(self.directory / 'stderr.log').read_text()[-2000:]}"
            return self._accepts()

        wait_for(ready, 20, f"{self.scheme} proxy on {self.port}")

    def _accepts(self) -> bool:
        import socket

        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def kill(self) -> None:
        """End the proxy at once (SIGKILL to its process group): every tunnel
        through it dies with it."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)
        self.process = None
        wait_for(lambda: not self._accepts(), 10, "the proxy's port to close")

    @property
    def log(self) -> Path:
        """The log of the current (or last) run."""
        return self.directory / f"proxy-{self.starts}.log"

    def logged(self, pattern: str) -> int:
        """How many lines of all its runs' logs match ``pattern``."""
        logs = (self.directory / f"proxy-{n}.log" for n in range(1, self.starts + 1))
        return sum(len(re.findall(pattern, log.read_text(errors="replace"), re.MULTILINE)) for log in logs if log.exists())

    def tunnels_to(self, port: int) -> int:
        """How many tunnels to ``127.0.0.1:port`` the proxy opened."""
        raise NotImplementedError

    def __enter__(self) -> ProxyServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


class Tinyproxy(ProxyServer):
    """tinyproxy: HTTP CONNECT to any port, Basic authentication with ``users``."""

    scheme = "http"

    def command(self) -> list[str]:
        assert TINYPROXY is not None
        config = self.directory / "tinyproxy.conf"
        lines = [
            f"Port {self.port}", "Listen 127.0.0.1", "Allow 127.0.0.1", "Timeout 600", "MaxClients 1000",
            "LogLevel Connect", f'LogFile "{self.log}"', f'PidFile "{self.directory / "tinyproxy.pid"}"',
        ]
        lines += [f"BasicAuth {user} {password}" for user, password in self.users.items()]
        config.write_text("\n".join(lines) + "\n")
        return [TINYPROXY, "-d", "-c", str(config)]

    def tunnels_to(self, port: int) -> int:
        """tinyproxy logs the target's port only with the request, and the
        tunnel it opened without it: this counts every tunnel, whatever its
        port (each test gives its proxy one listener)."""
        return self.logged(r'Established connection to host "127\.0\.0\.1"')

    def requests_to(self, port: int) -> int:
        """How many CONNECT requests for ``127.0.0.1:port`` it read, refused or not."""
        return self.logged(rf"Request \(file descriptor \d+\): CONNECT 127\.0\.0\.1:{port} ")


class Dante(ProxyServer):
    """dante's danted: SOCKS5, without authentication or (with ``users``)
    only with a user name and password."""

    scheme = "socks5"

    def command(self) -> list[str]:
        assert DANTED is not None
        config = self.directory / "danted.conf"
        method = "username" if self.users else "none"
        config.write_text(
            f"logoutput: {self.log}\n"
            f"internal: 127.0.0.1 port = {self.port}\n"
            "external: 127.0.0.1\n"
            f"socksmethod: {method}\n"
            "clientmethod: none\n"
            "user.privileged: root\n"
            "user.unprivileged: nobody\n"
            "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
            "socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 log: connect }\n"
        )
        danted = [DANTED, "-f", str(config), "-N", "1"]
        if not self.users:
            return danted
        assert can_run_dante_with_users()
        passwd, shadow = self.directory / "passwd", self.directory / "shadow"
        passwd_lines = Path("/etc/passwd").read_text().splitlines()
        shadow_lines = Path("/etc/shadow").read_text().splitlines() if os.path.exists("/etc/shadow") else []
        for number, (user, password) in enumerate(self.users.items()):
            hashed = subprocess.run([OPENSSL or "openssl", "passwd", "-6", password], check=True, capture_output=True,
                                    text=True, timeout=30).stdout.strip()
            passwd_lines.append(f"{user}:x:{61000 + number}:65534::/nonexistent:/usr/sbin/nologin")
            shadow_lines.append(f"{user}:{hashed}:19000:0:99999:7:::")
        passwd.write_text("\n".join(passwd_lines) + "\n")
        shadow.write_text("\n".join(shadow_lines) + "\n")
        shadow.chmod(0o600)
        script = f'mount --bind "{passwd}" /etc/passwd && mount --bind "{shadow}" /etc/shadow && exec "$@"'
        return [UNSHARE or "unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *danted]

    def tunnels_to(self, port: int) -> int:
        return self.logged(rf"tcp/connect \[: .* -> .*127\.0\.0\.1\.{port}\b")
