"""``rtcat`` (a netcat that survives broken links) and ``rtproxy`` (the fault proxy).

Exit codes of rtcat (docs/cli.md):

====  =======================================================
0     success: everything sent was acknowledged, everything received written
1     could not open a session (nothing listening, refused, timed out)
2     usage error
3     session lost: the peer never acknowledged some data (the count is printed)
4     the output could not be written (stdout closed early, as with ``rtcat ... | head``)
5     the input could not be sent as it is (a line over the peer's limit, a read error)
130   interrupted (Ctrl-C)
====  =======================================================
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, BinaryIO

from ..common.proxies import parse_proxy
from ..common.status import ChannelEvent, ChannelState, ChannelStatistics, EventKind
from ..core.auth import load_psk
from ..exceptions import ChannelClosed, ReliableTCPError, UsageError
from ..sync.channel import Channel
from ..sync.client import connect
from ..sync.server import Listener, listen
from ..testing.proxy import FaultProxy
from . import stdio, tunnel

__all__ = ["rtcat_main", "rtproxy_main", "EXIT_OK", "EXIT_CONNECT", "EXIT_USAGE", "EXIT_LOST", "EXIT_STDOUT",
           "EXIT_INPUT", "EXIT_INTERRUPT", "EXIT_TERMINATED"]

EXIT_OK = 0
EXIT_CONNECT = 1
EXIT_USAGE = 2
EXIT_LOST = 3
EXIT_STDOUT = 4
EXIT_INPUT = 5
EXIT_INTERRUPT = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process it ended

#: rtcat -l on SIGTERM with a journal: how long the drain may take, and when
#: the client is told to come back (a supervisor restarts it by then).
DRAIN_TIMEOUT = 10.0
DRAIN_RETRY_AFTER = 2.0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _rtcat_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtcat",
        usage="rtcat [options] HOST PORT\n       rtcat -l [options] [HOST] PORT\n"
        "       rtcat -L [BIND:]LPORT:HOST:HPORT [options] SERVER PORT\n"
        "       rtcat -R [BIND:]RPORT:HOST:HPORT [options] SERVER PORT\n"
        "       rtcat --exec COMMAND [--target HOST:HPORT] [options] SERVER PORT\n"
        "       rtcat -l [options] [HOST] PORT [--allow HOST:HPORT ...] [--allow-remote [BIND:]RPORT ...] "
        "[--exec COMMAND]\n"
        "       rtcat demo [options]\n       rtcat journal {ls,rm} DIR ...",
        description="netcat over reliable_tcp: every byte arrives once, in order, across pulled cables and resets.",
        epilog="Run 'rtcat demo' to watch it survive faults. Exit codes: 0 ok, 1 no session, 2 usage, "
        "3 session lost, 4 output not writable, 5 input not sendable, 130 interrupted.",
    )
    parser.add_argument("-l", "--listen", action="store_true", help="listen for a session instead of connecting")
    parser.add_argument("-k", "--keep-listening", action="store_true", help="with -l: accept further sessions, one after another")
    parser.add_argument("--lines", action="store_true", help="line mode: one message per line")
    parser.add_argument("--heartbeat", type=_seconds, default=3.0, help="heartbeat interval (s, default 3)")
    parser.add_argument(
        "--dead-after", type=_seconds, default=None, help="declare the link dead after this silence (s, default 3 beats)"
    )
    parser.add_argument("--resume-window", type=_seconds, default=120.0, help="how long a broken session is kept (s, default 120)")
    parser.add_argument("--connect-timeout", type=_seconds, default=30.0, help="retry the first connection this long (s, default 30)")
    parser.add_argument("--node-id", type=int, default=None, metavar="N",
                        help="with -l: 1..65535, carried in every session id issued here, so a load balancer can "
                        "route resumes to this node (docs/scaling.md)")
    parser.add_argument("--proxy", metavar="URL",
                        help="reach HOST through this proxy: http://[USER:PASS@]PROXY:PORT (CONNECT) or "
                             "socks5://[USER:PASS@]PROXY:PORT (default: https_proxy / all_proxy unless no_proxy says otherwise)")
    parser.add_argument("--no-proxy", action="store_true", help="dial HOST directly, whatever the environment says")
    parser.add_argument("-v", "--verbose", action="store_true", help="report state changes on stderr")
    parser.add_argument("--stats", action="store_true", help="print a statistics line on stderr at the end")
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls", action="store_true", help="connect with TLS, verifying the server against the system's CAs")
    tls.add_argument("--tls-cert", metavar="FILE", help="certificate (PEM): the listener's, or the client's for mutual TLS")
    tls.add_argument("--tls-key", metavar="FILE", help="private key (PEM) for --tls-cert")
    tls.add_argument(
        "--tls-ca", metavar="FILE", help="CA (PEM) to verify the peer: the server's, or with -l, require client certificates"
    )
    tls.add_argument("--tls-server-name", metavar="NAME", help="the name the server's certificate must carry (default: HOST)")
    tls.add_argument(
        "--insecure", action="store_true", help="TLS without verifying the server (dangerous: anyone on the path can read)"
    )
    durable = parser.add_argument_group("durable transfers (survive restarting either side)")
    durable.add_argument("--journal", metavar="DIR", help="keep the session in DIR, so a restart resumes it")
    durable.add_argument(
        "--input", metavar="FILE", help="send FILE instead of stdin; with --journal, a restart continues where it stopped"
    )
    durable.add_argument(
        "--output", metavar="FILE", help="with -l: write to FILE instead of stdout; with --journal, exactly once across restarts"
    )
    auth = parser.add_argument_group("pre-shared key (never on the command line)")
    auth.add_argument(
        "--psk-file", metavar="FILE", help="read the pre-shared key from FILE (hex digits, or base64: and base64; >= 16 bytes)"
    )
    auth.add_argument("--psk-env", metavar="VAR", help="read the pre-shared key from environment variable VAR")
    tunnels = parser.add_argument_group("tunnels (each tunnelled connection is a session of its own)")
    tunnels.add_argument("-L", dest="forward_local", action="append", default=[], metavar="[BIND:]LPORT:HOST:HPORT",
                         help="listen on BIND:LPORT (default 127.0.0.1); the listener at SERVER PORT connects each "
                         "connection to HOST:HPORT")
    tunnels.add_argument("-R", dest="forward_remote", action="append", default=[], metavar="[BIND:]RPORT:HOST:HPORT",
                         help="the listener at SERVER PORT listens on RPORT; each connection there is connected to "
                         "HOST:HPORT on this side")
    tunnels.add_argument("--exec", dest="exec_command", metavar="COMMAND",
                         help="run COMMAND (through /bin/sh) per session, its stdin/stdout the stream")
    tunnels.add_argument("--target", metavar="HOST:HPORT",
                         help="with --exec when connecting: the listener connects the command to HOST:HPORT "
                         "(default: to the listener's own --exec command)")
    tunnels.add_argument("--allow", action="append", default=[], metavar="HOST:HPORT",
                         help="with -l: a target the listener may connect tunnels to (none by default)")
    tunnels.add_argument("--allow-remote", action="append", default=[], metavar="[BIND:]RPORT",
                         help="with -l: a port the listener may listen on for -R (none by default)")
    parser.add_argument("address", nargs="+", metavar="HOST PORT", help="HOST PORT to connect to; with -l: [HOST] PORT")
    return parser


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context the options ask for, or None for plain TCP."""
    if args.listen:
        if not args.tls_cert:
            if args.tls_key or args.tls_ca:
                raise ValueError("a TLS listener needs --tls-cert (and --tls-key)")
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        if args.tls_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(args.tls_ca)
        return context
    if not (args.tls or args.tls_ca or args.insecure or args.tls_cert):
        return None
    context = ssl.create_default_context(cafile=args.tls_ca)
    if args.insecure:
        print("rtcat: WARNING: --insecure: the server is NOT verified; anyone on the path can read and alter "
              "this session", file=sys.stderr)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if args.tls_cert:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    return context


def rtcat_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rtcat``; returns the exit status."""
    stdin_closed, stdout_closed = stdio.claim_closed_stdio()
    if sys.stderr is None:  # print(file=None) would write diagnostics into the payload on stdout
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - the process's own stderr, for its whole life
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["journal"]:
        return _journal_main(args_list[1:])
    if args_list[:1] == ["demo"]:
        from . import demo

        parser = argparse.ArgumentParser(prog="rtcat demo", description=demo.__doc__)
        demo.add_arguments(parser)
        return demo.run_from_args(parser.parse_args(args_list[1:]))
    parser = _rtcat_parser()
    args = parser.parse_args(args_list)
    try:
        host, port = _address(args)
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        print(f"rtcat: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="rtcat: %(message)s", stream=sys.stderr)
    options: dict[str, Any] = {
        "heartbeat_interval": args.heartbeat,
        "dead_after": args.dead_after,
        "resume_window": args.resume_window,
        "on_event": _reporter() if args.verbose else None,
    }
    try:
        options["ssl_context"] = _tls_context(args)
    except (ValueError, OSError, ssl.SSLError) as exc:
        print(f"rtcat: TLS setup: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.tls_server_name:
        options["server_hostname"] = args.tls_server_name
    if args.journal:
        options["journal"] = args.journal
        if args.output:
            options["auto_commit"] = False  # rtcat commits once the bytes are on disk
    if args.lines and (args.input or args.output) and args.journal:
        print("rtcat: --lines does not combine with a journaled --input/--output", file=sys.stderr)
        return EXIT_USAGE
    if args.psk_file or args.psk_env:
        try:
            options["psk"] = load_psk(path=args.psk_file, env=args.psk_env)
        except (ValueError, OSError) as exc:
            print(f"rtcat: pre-shared key: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.node_id is not None:
        if not args.listen or not 0 < args.node_id <= 65535:
            print("rtcat: --node-id N (1..65535) is for the listening side (-l)", file=sys.stderr)
            return EXIT_USAGE
        options["node_id"] = args.node_id
    if args.proxy is not None or args.no_proxy:
        if args.listen or (args.proxy is not None and args.no_proxy):
            print("rtcat: --proxy or --no-proxy (not both) is for the connecting side", file=sys.stderr)
            return EXIT_USAGE
        try:
            if args.proxy is not None:
                parse_proxy(args.proxy)  # a bad URL is a usage error before any session
            options["proxy"] = False if args.no_proxy else args.proxy
        except UsageError as exc:
            print(f"rtcat: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.dead_after is not None and args.dead_after <= args.heartbeat:
        print("rtcat: --dead-after must be longer than --heartbeat", file=sys.stderr)
        return EXIT_USAGE
    if _tunnel_mode(args):
        return _tunnel_main(args, parser, (host, port), options)
    input_file: BinaryIO | None = None
    if args.input:
        try:
            input_file = open(args.input, "rb")  # noqa: SIM115 - read by the session, for the process's life
        except OSError as exc:  # before any session opens: nobody waits for one that can't be fed
            print(f"rtcat: {args.input}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
    # The relay's own log line would repeat what rtcat says of every failure.
    logging.getLogger(tunnel.__name__).setLevel(logging.ERROR)
    session = _Session(args, input_file, stdin_closed, stdout_closed)
    try:
        if args.listen:
            return session.serve(host, port, options)
        return session.connect(host, port, options, args.connect_timeout)
    except KeyboardInterrupt:
        session.abort()
        print("rtcat: interrupted", file=sys.stderr)
        return EXIT_INTERRUPT


def _tunnel_mode(args: argparse.Namespace) -> bool:
    return bool(args.forward_local or args.forward_remote or args.exec_command or args.allow or args.allow_remote
                or args.target)


def _tunnel_main(
    args: argparse.Namespace, parser: argparse.ArgumentParser, address: tuple[str, int], options: dict[str, Any]
) -> int:
    """-L, -R, --exec, and the listening end of tunnels."""
    from . import tunnel, tunnel_modes

    def usage(text: str) -> int:
        parser.print_usage(sys.stderr)
        print(f"rtcat: {text}", file=sys.stderr)
        return EXIT_USAGE

    if args.journal or args.input or args.output or args.lines or args.keep_listening:
        return usage("tunnels take no --journal, --input, --output, --lines or -k")
    if args.listen and (args.forward_local or args.forward_remote or args.target):
        return usage("-L, -R and --target are for the connecting side; the listener takes --allow, --allow-remote, --exec")
    if not args.listen and (args.allow or args.allow_remote):
        return usage("--allow and --allow-remote are for the listening side (-l)")
    if not args.listen and args.exec_command and (args.forward_local or args.forward_remote):
        return usage("--exec does not combine with -L or -R")
    if args.target and not args.exec_command:
        return usage("--target goes with --exec")
    try:
        local = [tunnel.parse_forward(spec) for spec in args.forward_local]
        remote = [tunnel.parse_forward(spec) for spec in args.forward_remote]
        allow = {tunnel.parse_hostport(spec) for spec in args.allow}
        allow_remote = {tunnel.parse_bind(spec) for spec in args.allow_remote}
        target = tunnel.parse_hostport(args.target) if args.target else None
    except ValueError as exc:
        return usage(str(exc))

    def report(text: str) -> None:
        if args.verbose:
            print(f"rtcat: {text}", file=sys.stderr, flush=True)

    try:
        if args.listen:
            server = tunnel_modes.TunnelListener(address, options, allow=allow, allow_remote=allow_remote,
                                                 exec_command=args.exec_command, report=report)
            report(f"tunnels: listening on {tunnel.format_address(server.address)}")
            try:
                server.serve_forever()
            finally:
                server.close()
            return EXIT_OK
        if args.exec_command:
            result = tunnel_modes.exec_client(args.exec_command, address, options, target=target,
                                              connect_timeout=args.connect_timeout, report=report)
            if not result.clean:
                print(f"rtcat: the stream was reset: {result.reason}", file=sys.stderr)
            return EXIT_OK if result.clean else EXIT_LOST
        failures: list[str] = []

        def guarded(forward: Any, bind: tuple[str, int], dest: tuple[str, int]) -> None:
            try:
                forward(bind, dest, address, options, connect_timeout=args.connect_timeout, report=report)
            except tunnel.TunnelRefused as exc:
                failures.append(f"the listener refused: {exc.reason}")
            except (OSError, ReliableTCPError) as exc:
                failures.append(f"{bind[0]}:{bind[1]}: {exc}")
            if failures:
                print(f"rtcat: {failures[-1]}", file=sys.stderr, flush=True)

        workers = [threading.Thread(target=guarded, args=(tunnel_modes.forward_local, bind, dest), daemon=True)
                   for bind, dest in local]
        workers += [threading.Thread(target=guarded, args=(tunnel_modes.forward_remote, bind, dest), daemon=True)
                    for bind, dest in remote]
        for worker in workers:
            worker.start()
        for worker in workers:
            while worker.is_alive():  # -L runs until interrupted; -R until its control session ends
                worker.join(0.5)  # in steps, so Ctrl-C is seen
        return EXIT_CONNECT if failures or remote else EXIT_OK
    except tunnel.TunnelRefused as exc:
        print(f"rtcat: the listener refused: {exc.reason}", file=sys.stderr)
        return EXIT_CONNECT
    except (OSError, ReliableTCPError) as exc:
        print(f"rtcat: {exc}", file=sys.stderr)
        return EXIT_CONNECT
    except KeyboardInterrupt:
        print("rtcat: interrupted", file=sys.stderr)
        return EXIT_INTERRUPT


#: A session that opens within this long is not announced (scripts stay quiet).
_QUIET_CONNECT = 0.25
#: While connect retries, how often to say so again.
_WAITING_REMINDER = 5.0


def _say_while_waiting(connected: threading.Event, host: str, port: int, timeout: float) -> None:
    """Tell the user on stderr what connect is waiting for, and until when,
    as long as it retries (netcat fails at once; rtcat retries on purpose)."""
    if connected.wait(_QUIET_CONNECT):
        return
    give_up = time.monotonic() + timeout - _QUIET_CONNECT
    until = time.strftime("%H:%M:%S", time.localtime(time.time() + timeout - _QUIET_CONNECT))
    print(f"rtcat: waiting for a session with {host}:{port}, retrying until {until} "
          f"(--connect-timeout {timeout:g} s)", file=sys.stderr, flush=True)
    while not connected.wait(_WAITING_REMINDER):
        left = give_up - time.monotonic()
        if left > 0:
            print(f"rtcat: still no session with {host}:{port}; retrying for {left:.0f} s more",
                  file=sys.stderr, flush=True)


def _journal_main(argv: list[str]) -> int:
    """``rtcat journal ls DIR`` and ``rtcat journal rm DIR [SESSION | --all]``."""
    from ..durable.directory import list_journals, remove_journal
    from ..exceptions import JournalLocked

    parser = argparse.ArgumentParser(prog="rtcat journal", description="list or remove the sessions a journal directory holds")
    commands = parser.add_subparsers(dest="command", required=True)
    ls = commands.add_parser("ls", help="list the sessions (state, unacknowledged messages and bytes, age)")
    ls.add_argument("directory")
    rm = commands.add_parser("rm", help="remove one session's journal, or all of them; refused while in use")
    rm.add_argument("directory")
    rm.add_argument("session", nargs="?", help="session id (a unique prefix is enough)")
    rm.add_argument("--all", action="store_true", help="remove every journal and retired log in DIR")
    args = parser.parse_args(argv)
    try:
        if args.command == "ls":
            infos = list_journals(args.directory)
            print(f"{'SESSION':32}  {'STATUS':14}  {'UNACKED':>8}  {'BYTES':>10}  {'AGE':>8}  PATH")
            for info in infos:
                print(f"{info.session_id or '-':32}  {info.status:14}  {info.unacked_messages:>8}  {info.unacked_bytes:>10}  "
                      f"{info.age_seconds:>7.0f}s  {info.path}")
                if info.damage:
                    print(f"{'':32}  damaged {info.damage}; records up to there are counted "
                          "(docs/durability.md: 'A damaged journal')")
            return EXIT_OK
        if not args.all and not args.session:
            print("rtcat journal rm: name a SESSION, or give --all", file=sys.stderr)
            return EXIT_USAGE
        for path in remove_journal(args.directory, args.session, everything=args.all):
            print(f"removed {path}")
        return EXIT_OK
    except JournalLocked as exc:
        print(f"rtcat journal: {exc}; stop that process first", file=sys.stderr)
        return EXIT_CONNECT
    except (OSError, ValueError) as exc:
        print(f"rtcat journal: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _any_address() -> str:
    """Every address of the machine: IPv6's, which takes IPv4 connections
    too (the listener makes it dual-stack), where the machine has IPv6;
    IPv4's otherwise."""
    if socket.has_ipv6:
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
                probe.bind(("::", 0))
            return "::"
        except OSError:
            pass
    return "0.0.0.0"


def _address(args: argparse.Namespace) -> tuple[str, int]:
    parts = args.address
    if args.listen and len(parts) == 1:
        parts = [_any_address(), parts[0]]
    if len(parts) != 2:
        raise ValueError("give HOST PORT (or, with -l, [HOST] PORT)")
    try:
        port = int(parts[1])
    except ValueError:
        raise ValueError(f"not a port number: {parts[1]!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    return parts[0], port


def _reporter() -> Any:
    def report(event: ChannelEvent) -> None:
        extra = f" ({event.detail})" if event.detail else ""
        replayed = f", {event.replayed} messages replayed" if event.kind is EventKind.RESUMED else ""
        print(f"rtcat: {event.kind}{extra}{replayed}", file=sys.stderr, flush=True)

    return report


class _Session:
    """One rtcat run: each session it opens or accepts carries stdin (or
    --input) to the peer and the peer's stream to stdout (or --output),
    with plain framing: either direction ends on its own (docs/cli.md)."""

    def __init__(self, args: argparse.Namespace, input_file: BinaryIO | None, stdin_closed: bool,
                 stdout_closed: bool) -> None:
        self.args = args
        self.input_file = input_file
        self.stdin_closed = stdin_closed
        self.stdout_closed = stdout_closed
        self.channel: Channel | None = None
        self.refused_tunnel = False
        self.terminating: threading.Thread | None = None  # SIGTERM: the thread ending the listener

    # ------------------------------------------------------------ modes

    def connect(self, host: str, port: int, options: dict[str, Any], timeout: float) -> int:
        connected = threading.Event()
        waiting = threading.Thread(
            target=_say_while_waiting, args=(connected, host, port, timeout), name="rtcat-waiting", daemon=True
        )
        waiting.start()
        try:
            self.channel = connect((host, port), timeout=timeout, **options)
        except (OSError, ReliableTCPError) as exc:
            print(f"rtcat: can't open a session with {host}:{port}: {exc}", file=sys.stderr)
            return EXIT_CONNECT
        finally:
            connected.set()
            waiting.join()
        return self._carry(self.channel, with_input=True, opened_here=True)

    def serve(self, host: str, port: int, options: dict[str, Any]) -> int:
        try:
            listener = listen((host, port), **options)
        except OSError as exc:
            print(f"rtcat: can't listen on {tunnel.format_address((host, port))}: {exc}", file=sys.stderr)
            return EXIT_CONNECT
        with listener:
            if self.args.verbose:
                print(f"rtcat: listening on {tunnel.format_address(listener.address)}", file=sys.stderr)
            previous = signal.signal(signal.SIGTERM, lambda *_: self._on_sigterm(listener))
            try:
                first = True
                while True:
                    try:
                        self.channel = listener.accept()
                    except ChannelClosed:
                        if self.terminating is None:
                            raise
                        return self._terminated()
                    # stdin belongs to the first session only (with -k, later ones just receive).
                    status = self._carry(self.channel, with_input=first, opened_here=False)
                    first = False
                    if self.terminating is not None:
                        return self._terminated()
                    if not self.args.keep_listening or status in (EXIT_STDOUT, EXIT_INTERRUPT):
                        return status
            finally:
                signal.signal(signal.SIGTERM, previous)

    def _on_sigterm(self, listener: Listener) -> None:
        """SIGTERM (in the main thread, between two of its steps): end the
        listener from a thread of its own, so the session and the relay are
        never interrupted halfway; the main thread sees the session end."""
        if self.terminating is not None:
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        self.terminating = threading.Thread(target=self._end_listener, args=(listener,), name="rtcat-sigterm", daemon=True)
        self.terminating.start()

    def _end_listener(self, listener: Listener) -> None:
        """With a journal, drain: the client is told to come back in a moment
        and the next rtcat -l with the journal takes the session back.
        Without one the session can't outlive this process: it is aborted,
        so the peer learns it at once."""
        if self.args.journal:
            listener.drain(DRAIN_TIMEOUT, retry_after=DRAIN_RETRY_AFTER)
        else:
            self.abort()
            listener.close()

    def _terminated(self) -> int:
        assert self.terminating is not None
        self.terminating.join(DRAIN_TIMEOUT + 5.0)
        if self.args.journal:
            print(f"rtcat: terminated; the session waits in {self.args.journal} for the next rtcat -l with it",
                  file=sys.stderr)
        else:
            print("rtcat: terminated; the session was aborted (without --journal it can't outlive this process)",
                  file=sys.stderr)
        return EXIT_TERMINATED

    def abort(self) -> None:
        if self.channel is not None:
            self.channel.abort()

    # ------------------------------------------------------------ one session

    def _carry(self, channel: Channel, *, with_input: bool, opened_here: bool) -> int:
        """Relay one session until both directions ended; its exit status."""
        try:
            endpoint = stdio.StdioEndpoint(self._source(channel) if with_input else stdio.EmptySource(),
                                           self._sink(channel))
        except OSError as exc:
            channel.abort()  # the peer learns at once that this session won't be carried
            print(f"rtcat: {self.args.output}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_STDOUT
        self.refused_tunnel = False
        result = tunnel.relay(channel, endpoint, closer=opened_here, framing=tunnel.PlainFraming(lines=self.args.lines),
                              screen=None if opened_here else self._refuse_tunnel,
                              close_timeout=max(30.0, self.args.resume_window))
        return self._finish(channel, result)

    def _source(self, channel: Channel) -> stdio.Source:
        if self.input_file is not None:
            return stdio.FileSource(self.input_file, channel)
        if self.stdin_closed:
            return stdio.EmptySource()
        return stdio.FdSource(sys.stdin.fileno())

    def _sink(self, channel: Channel) -> stdio.Sink:
        if self.args.output:
            return stdio.FileSink(self.args.output, channel, journaled=bool(self.args.journal))
        return stdio.StdoutSink(closed=self.stdout_closed)

    def _refuse_tunnel(self, channel: Channel, message: bytes) -> str | None:
        """A tunnel client reached this plain listener: refuse it, print nothing of it."""
        if not message.startswith(tunnel.MAGIC):
            return None
        self.refused_tunnel = True
        reason = ("a tunnel request arrived, but this listener serves no tunnels "
                  "(start it with --allow, --allow-remote or --exec); refused")
        print(f"rtcat: {reason}", file=sys.stderr, flush=True)  # now, not once the client has gone
        try:
            channel.send(bytes([tunnel.Kind.REFUSED]) + b"this rtcat listener serves no tunnels")
        except ReliableTCPError:
            pass
        return reason

    def _finish(self, channel: Channel, result: tunnel.RelayResult) -> int:
        status = _exit_status(result)
        if self.refused_tunnel:
            status = EXIT_CONNECT
        if status == EXIT_STDOUT:
            # The Python docs' idiom for a closed pipe: point stdout at
            # /dev/null so the interpreter's final flush does not fail again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
        elif status == EXIT_LOST and result.fault is tunnel.Fault.SESSION:
            end = tunnel.PlainFraming(lines=self.args.lines).end
            data = [payload for _, payload in result.unacked if payload != end]
            also = " (and the end of the stream)" if len(data) < len(result.unacked) else ""
            print(f"rtcat: {result.reason}", file=sys.stderr)
            print(f"rtcat: {sum(map(len, data))} bytes in {len(data)} messages were not acknowledged{also}",
                  file=sys.stderr)
        elif status != EXIT_OK and not self.refused_tunnel:  # a refusal was said when it happened
            print(f"rtcat: {result.reason}", file=sys.stderr)
        if status != EXIT_OK and channel.state not in (ChannelState.CLOSED, ChannelState.FAILED):
            channel.abort()  # every way out but a clean end ends the session at once: the peer learns it
        if self.args.stats:
            print(_stats_line(channel.statistics()), file=sys.stderr)
        return status


def _exit_status(result: tunnel.RelayResult) -> int:
    """The documented exit status for how a session's stream ended."""
    if result.clean:
        return EXIT_OK
    return {
        tunnel.Fault.INPUT: EXIT_INPUT,
        tunnel.Fault.OUTPUT: EXIT_STDOUT,
    }.get(result.fault or tunnel.Fault.SESSION, EXIT_LOST)


def _stats_line(stats: ChannelStatistics) -> str:
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}s"

    return (
        f"rtcat: sent {stats.bytes_sent} bytes in {stats.messages_sent} messages, "
        f"received {stats.bytes_received} bytes in {stats.messages_received} messages, "
        f"reconnects {stats.resumes}, retransmitted {stats.retransmitted}, "
        f"last detection {seconds(stats.last_detection_time)}, last recovery {seconds(stats.last_recovery_time)}, "
        f"rtt {seconds(stats.last_rtt)}"
    )


# ---------------------------------------------------------------------- rtproxy


def _rtproxy_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtproxy",
        description="A TCP proxy that injects faults: test how your application survives a bad network.",
    )
    parser.add_argument("listen_port", type=int, help="port to listen on (127.0.0.1 unless --host)")
    parser.add_argument("target_host")
    parser.add_argument("target_port", type=int)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--every", type=_seconds, default=None, help="inject a fault every N seconds")
    parser.add_argument("--for", dest="duration", type=_seconds, default=2.0, help="a blackhole lasts M seconds (default 2)")
    parser.add_argument("--mode", choices=("blackhole", "reset", "close"), default="blackhole", help="scheduled fault kind")
    parser.add_argument("--direction", choices=("up", "down", "both"), default="both")
    parser.add_argument("--latency", type=float, default=0.0, help="added delay per chunk (s)")
    parser.add_argument("--jitter", type=float, default=0.0, help="random +/- delay (s)")
    parser.add_argument("--bandwidth", type=float, default=None, help="bytes per second")
    parser.add_argument("--slice", type=int, default=None, help="forward in pieces of at most this many bytes")
    parser.add_argument("--limit-bytes", type=int, default=None, help="reset each connection after this many bytes")
    parser.add_argument("--seed", type=int, default=None, help="random seed (printed when not given)")
    parser.add_argument("--run-for", type=_seconds, default=None, help="stop after this many seconds")
    return parser


def rtproxy_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rtproxy``."""
    args = _rtproxy_parser().parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FaultProxy((args.target_host, args.target_port), (args.host, args.listen_port), seed=args.seed) as proxy:
        proxy.set_faults(
            args.direction,
            latency=args.latency,
            jitter=args.jitter,
            bandwidth=args.bandwidth,
            slice_size=args.slice,
            limit_bytes=args.limit_bytes,
        )
        print(f"rtproxy: {proxy.address[0]}:{proxy.address[1]} -> {args.target_host}:{args.target_port} seed={proxy.seed}",
              file=sys.stderr, flush=True)
        end = None if args.run_for is None else time.monotonic() + args.run_for
        next_fault = None if args.every is None else time.monotonic() + args.every
        try:
            while not stop.is_set():
                now = time.monotonic()
                if end is not None and now >= end:
                    break
                if next_fault is not None and now >= next_fault:
                    _scheduled_fault(proxy, args, stop)
                    next_fault = time.monotonic() + args.every
                stop.wait(0.05)
        except KeyboardInterrupt:
            return EXIT_INTERRUPT
    return EXIT_OK


def _scheduled_fault(proxy: FaultProxy, args: argparse.Namespace, stop: threading.Event) -> None:
    print(f"rtproxy: {args.mode}", file=sys.stderr, flush=True)
    if args.mode == "blackhole":
        proxy.blackhole(args.direction)
        stop.wait(args.duration)
        proxy.set_faults(args.direction, blackhole=False)
        print("rtproxy: healed", file=sys.stderr, flush=True)
    elif args.mode == "reset":
        proxy.reset()
    else:
        proxy.close_connections()


def _run(entry: Any) -> None:
    sys.exit(entry())


def rtcat() -> None:
    """Console-script wrapper for rtcat."""
    _run(rtcat_main)


def rtproxy() -> None:
    """Console-script wrapper for rtproxy."""
    _run(rtproxy_main)
