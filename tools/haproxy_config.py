#!/usr/bin/env python3
"""Print an HAProxy configuration that routes reliable_tcp resumes to the node that holds them.

    python tools/haproxy_config.py --bind 0.0.0.0:7000 1=10.0.0.11:7000 2=10.0.0.12:7000 3=10.0.0.13:7000
    python tools/haproxy_config.py --tls-crt /etc/haproxy/site.pem 1=10.0.0.11:7000 2=10.0.0.12:7000

Each NODE_ID=HOST:PORT is a listener started with ``node_id=NODE_ID``
(``rtcat -l --node-id``). A resuming HELLO carries the session id, whose
first two bytes are the issuing node's id, at frame bytes 13-14
(docs/protocol.md, section 4.6); a new session's HELLO carries zeros there
and is balanced across every node. The tests run exactly this output
(tests/integration/test_scaling.py); docs/scaling.md explains each line.
"""

from __future__ import annotations

import argparse
import sys

#: The first 15 bytes of a HELLO: the 12-byte frame header, flags, the node id.
HELLO_BYTES_NEEDED = 15
NODE_ID_OFFSET = 13


def render(
    bind: str,
    nodes: dict[int, str],
    *,
    check_interval_ms: int = 1000,
    stats_socket: str | None = None,
    tls_certificate: str | None = None,
) -> str:
    """The configuration text for ``nodes`` (node id -> "host:port").

    With ``tls_certificate`` (a PEM file holding the certificate chain and
    its key) HAProxy terminates TLS and forwards plain TCP: the routing rules
    then read the decrypted HELLO, unchanged.
    """
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
        "",
        "frontend reliable_tcp",
        f"    bind {bind}" + (f" ssl crt {tls_certificate}" if tls_certificate else ""),
        # Wait for the HELLO's first bytes (the client speaks first), at most 5 s.
        "    tcp-request inspect-delay 5s",
        f"    tcp-request content accept if {{ req.len ge {HELLO_BYTES_NEEDED} }}",
    ]
    for node in sorted(nodes):
        lines.append(f"    use_backend node{node} if {{ req.payload({NODE_ID_OFFSET},2) -m bin {node:04x} }}")
    lines += [
        "    default_backend new_sessions",
        "",
        "backend new_sessions",
        "    balance leastconn",
    ]
    for node, address in sorted(nodes.items()):
        lines.append(f"    server node{node} {address} check inter {check_interval_ms}")
    for node, address in sorted(nodes.items()):
        lines += ["", f"backend node{node}", f"    server node{node} {address} check inter {check_interval_ms}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="0.0.0.0:7000", help="where HAProxy listens (default 0.0.0.0:7000)")
    parser.add_argument("--tls-crt", metavar="PEM", help="terminate TLS here: certificate chain and key in one PEM file")
    parser.add_argument("nodes", nargs="+", metavar="NODE_ID=HOST:PORT")
    args = parser.parse_args()
    nodes = {}
    for spec in args.nodes:
        node, _, address = spec.partition("=")
        if not node.isdigit() or not 0 < int(node) <= 65535 or ":" not in address:
            parser.error(f"expected NODE_ID=HOST:PORT with NODE_ID 1..65535, got {spec!r}")
        nodes[int(node)] = address
    sys.stdout.write(render(args.bind, nodes, tls_certificate=args.tls_crt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
