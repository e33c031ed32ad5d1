"""Two test hosts on one machine: network namespaces joined by a veth pair.

Needs root, iproute2 and iptables; ``NetPair.unavailable()`` says why not
when they are missing, so tests can skip with that reason. Addresses exist
only inside the namespaces; everything is torn down in ``close()``, which
the fixtures call even when a test fails or times out.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Numbers the pairs one test process makes, so that no two share a name.
_PAIRS = itertools.count(1)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=30)


class NetPair:
    """Hosts ``a`` (client side) and ``b`` (server side) on one veth link."""

    def __init__(self) -> None:
        # Tests run side by side (pytest-xdist workers, or two runs at once):
        # every name that lives in the machine's shared namespace is made of
        # the worker, its PID (unique on the machine while it lives) and a
        # counter, never fixed. Interface names must fit in 15 bytes.
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        pid, number = os.getpid(), next(_PAIRS)
        self.ns = {side: f"rtcp-{side}-{worker}-{pid}-{number}" for side in "ab"}
        self.dev = {side: f"rtv{side}{pid:x}n{number}" for side in "ab"}
        assert all(len(name) <= 15 for name in self.dev.values()), self.dev
        # The addresses exist only inside this pair's namespaces; each pair
        # still gets its own (by worker and counter), so that a capture or a
        # log line names exactly one test.
        worker_number = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 255
        subnet = f"10.{worker_number % 256}.{number % 256}"
        self.addr = {"a": f"{subnet}.1", "b": f"{subnet}.2"}
        self.procs: list[subprocess.Popen[bytes]] = []
        self._rules: list[tuple[str, list[str]]] = []
        try:
            for side in "ab":
                _run("ip", "netns", "add", self.ns[side])
            _run("ip", "link", "add", self.dev["a"], "type", "veth", "peer", "name", self.dev["b"])
            for side in "ab":
                _run("ip", "link", "set", self.dev[side], "netns", self.ns[side])
                self.ip(side, "addr", "add", f"{self.addr[side]}/24", "dev", self.dev[side])
                self.ip(side, "link", "set", self.dev[side], "up")
                self.ip(side, "link", "set", "lo", "up")
        except Exception:
            self.close()
            raise

    @staticmethod
    def unavailable() -> str | None:
        """Why namespaces can't be used here, or None."""
        if sys.platform != "linux":
            return "network namespaces are Linux-only"
        if os.geteuid() != 0:
            return "needs root to create network namespaces"
        for tool in ("ip", "iptables"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed (apt-get install iproute2 iptables)"
        probe = f"rtcp-probe-{os.getpid()}-{next(_PAIRS)}"
        result = _run("ip", "netns", "add", probe, check=False)
        if result.returncode != 0:
            return f"can't create a network namespace: {result.stderr.strip()}"
        _run("ip", "netns", "del", probe, check=False)
        return None

    def ip(self, side: str, *args: str) -> None:
        _run("ip", "-n", self.ns[side], *args)

    def spawn(self, side: str, argv: list[str], **popen: object) -> subprocess.Popen[bytes]:
        """Start a process inside host ``side``; ended by ``close()`` if still running."""
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns[side], *argv], env=env, **popen)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    # --------------------------------------------------------------- faults

    def link(self, side: str, up: bool) -> None:
        """Pull (or plug back) the cable at ``side``'s end."""
        self.ip(side, "link", "set", self.dev[side], "up" if up else "down")

    def _iptables(self, side: str, rule: list[str]) -> None:
        _run("ip", "netns", "exec", self.ns[side], "iptables", "-A", *rule)
        self._rules.append((side, rule))

    def clear_rules(self) -> None:
        """Remove every iptables rule added by this object."""
        for side, rule in reversed(self._rules):
            _run("ip", "netns", "exec", self.ns[side], "iptables", "-D", *rule, check=False)
        self._rules.clear()

    def blackhole(self) -> None:
        """Drop every packet in both directions, links up: no FIN, no RST."""
        for side in "ab":
            self._iptables(side, ["INPUT", "-i", self.dev[side], "-j", "DROP"])
            self._iptables(side, ["OUTPUT", "-o", self.dev[side], "-j", "DROP"])

    def inject_resets(self) -> None:
        """Answer every TCP packet arriving on the link with a RST, like a middlebox."""
        for side in "ab":
            rule = ["INPUT", "-i", self.dev[side], "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"]
            self._iptables(side, rule)

    def random_loss(self, probability: float) -> None:
        """Drop each packet arriving on either side with ``probability``."""
        for side in "ab":
            match = ["-m", "statistic", "--mode", "random", "--probability", str(probability)]
            self._iptables(side, ["INPUT", "-i", self.dev[side], *match, "-j", "DROP"])

    # ------------------------------------------------------------- teardown

    def close(self) -> None:
        """End every process started here (by PID) and delete both namespaces."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for side in "ab":
            _run("ip", "netns", "del", self.ns[side], check=False)
        # The veth pair vanishes with its namespaces; nothing is left behind.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
            ns in _run("ip", "netns", "list", check=False).stdout for ns in self.ns.values()
        ):
            time.sleep(0.05)  # polling until the kernel has released them
