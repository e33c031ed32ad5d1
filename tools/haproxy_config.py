#!/usr/bin/env python3
"""Print an HAProxy configuration that routes reliable_tcp resumes to the node that holds them.

    python tools/haproxy_config.py --bind 0.0.0.0:7000 1=10.0.0.11:7000 2=10.0.0.12:7000 3=10.0.0.13:7000
    python tools/haproxy_config.py --tls-crt /etc/haproxy/site.pem 1=10.0.0.11:7000 2=10.0.0.12:7000

Each NODE_ID=HOST:PORT is a listener started with ``node_id=NODE_ID``
(``rtcat -l --node-id``). A resuming HELLO carries the session id, whose
first two bytes are the issuing node's id, at frame bytes 13-14
(docs/protocol.md, section 4.6); a new session's HELLO carries zeros there
and goes to the node with the fewest connections. The health check speaks
the protocol, so a hung node is taken out as well as a dead one. The tests run exactly this output
(tests/integration/test_scaling.py); docs/scaling.md explains each line.
"""

from __future__ import annotations

import argparse
import sys

#: The first 15 bytes of a HELLO: the 12-byte frame header, flags, the node id.
HELLO_BYTES_NEEDED = 15
NODE_ID_OFFSET = 13
#: The health check (docs/protocol.md 4.6): a resuming HELLO for the
#: all-zero session id, which no node issues, answered at once by a node
#: whose handshakes work with REJECT SESSION_UNKNOWN: "RT", version 1, type
#: 3, the length and checksum (8 bytes), then reason 1. A hung node (one
#: that still accepts TCP connections) fails it, and so does a closing one
#: (it answers SERVER_BUSY, reason 4): new sessions go elsewhere.
PROBE_HELLO = "5254010100000029f050dce7" "01" + "00" * 32 + "0000000000000001"
PROBE_REPLY = "^52540103[0-9A-Fa-f]{16}01"


def render(
    bind: str,
    nodes: dict[int, str],
    *,
    check_interval_ms: int = 1000,
    check_timeout_ms: int = 2000,
    stats_socket: str | None = None,
    tls_certificate: str | None = None,
) -> str:
    """The configuration text for ``nodes`` (node id -> "host:port").

    Every connection goes to one backend: a resume to the node its session
    id names (``use-server``), a new session to the node with the fewest
    connections. One backend, so ``leastconn`` counts every connection a
    node holds, resumed ones included.

    With ``tls_certificate`` (a PEM file holding the certificate chain and
    its key) HAProxy terminates TLS and forwards plain TCP: the routing rules
    then read the decrypted HELLO, unchanged.
    """
    for node in nodes:
        if not 0 < node <= 65535:
            raise ValueError(f"node ids are 1..65535, got {node}")
    lines = [
        "global",
        "    maxconn 8000",  # two descriptors per connection: within a 20,000 descriptor limit
        *([f"    stats socket {stats_socket} mode 600 level admin"] if stats_socket else []),
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        # Longer than the longest silence of a live session (dead_after): the
        # balancer must never be the one that cuts an idle session.
        "    timeout client 1h",
        "    timeout server 1h",
        f"    timeout check {check_timeout_ms}ms",
        "",
        "frontend reliable_tcp",
        f"    bind {bind}" + (f" ssl crt {tls_certificate}" if tls_certificate else ""),
        # Wait for the HELLO's first bytes (the client speaks first), at most 5 s.
        "    tcp-request inspect-delay 5s",
        f"    tcp-request content accept if {{ req.len ge {HELLO_BYTES_NEEDED} }}",
        "    default_backend nodes",
        "",
        "backend nodes",
        "    balance leastconn",
        "    option tcp-check",
        "    tcp-check connect",
        f"    tcp-check send-binary {PROBE_HELLO}",
        f"    tcp-check expect rbinary {PROBE_REPLY}",
    ]
    for node in sorted(nodes):
        lines.append(f"    use-server node{node} if {{ req.payload({NODE_ID_OFFSET},2) -m bin {node:04x} }}")
    for node, address in sorted(nodes.items()):
        lines.append(f"    server node{node} {address} check inter {check_interval_ms}")
    return "\n".join(lines) + "\n"


def parse_nodes(specs: list[str]) -> dict[int, str]:
    """``NODE_ID=HOST:PORT`` arguments into a dict; ValueError for a bad one,
    a node id given twice, or an address given twice."""
    nodes: dict[int, str] = {}
    for spec in specs:
        node, _, address = spec.partition("=")
        if not node.isdigit() or not 0 < int(node) <= 65535 or ":" not in address:
            raise ValueError(f"expected NODE_ID=HOST:PORT with NODE_ID 1..65535, got {spec!r}")
        if int(node) in nodes:
            raise ValueError(f"node id {int(node)} is given twice: every node needs its own (its sessions' resumes "
                             "are routed by it)")
        if address in nodes.values():
            raise ValueError(f"{address} is given twice")
        nodes[int(node)] = address
    return nodes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="0.0.0.0:7000", help="where HAProxy listens (default 0.0.0.0:7000)")
    parser.add_argument("--tls-crt", metavar="PEM", help="terminate TLS here: certificate chain and key in one PEM file")
    parser.add_argument("nodes", nargs="+", metavar="NODE_ID=HOST:PORT")
    args = parser.parse_args()
    try:
        nodes = parse_nodes(args.nodes)
    except ValueError as exc:
        parser.error(str(exc))
    sys.stdout.write(render(args.bind, nodes, tls_certificate=args.tls_crt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
