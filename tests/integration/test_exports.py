"""The public surface: each public package's ``__all__``, and a root that
loads a front end only when it is used."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

#: The public names of each public package. Adding one is a decision (and
#: a line here); losing one breaks users.
PUBLIC = {
    "reliable_tcp": {
        "AuthenticationFailed", "Backoff", "Channel", "ChannelBroken", "ChannelClosed", "ChannelEvent",
        "ChannelOptions", "ChannelState", "ChannelStatistics", "COMPILED", "CorruptFrame", "EventKind", "FrameError",
        "FrameTooLarge", "InvalidState", "JournalDamaged", "JournalError", "JournalInfo", "JournalLocked",
        "JournalWriteFailed", "ListenOptions", "Listener", "ListenerStatistics", "MessageTooLarge",
        "ProtocolError", "RejectedByPeer", "ReliableTCPError", "SequenceClaimError", "SessionConfig",
        "ProxyError", "SessionHandedOver", "SessionLost", "ShellOptions", "TLSHandshakeError", "UnsupportedVersion", "UsageError",
        "WindowFull",
        "connect", "list_journals", "listen", "load_psk", "remove_journal",
    },
    "reliable_tcp.asyncio": {"Channel", "Listener", "Server", "connect", "listen", "serve"},
    "reliable_tcp.testing": {"DirectionFaults", "FaultProxy", "Tally", "check_stream"},
    "reliable_tcp.cli": {
        "EXIT_CONNECT", "EXIT_INPUT", "EXIT_INTERRUPT", "EXIT_LOST", "EXIT_OK", "EXIT_STDOUT", "EXIT_USAGE",
        "rtcat", "rtcat_main", "rtproxy", "rtproxy_main",
    },
}


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_all_lists_exactly_the_public_names_and_each_resolves(package: str) -> None:
    module = importlib.import_module(package)
    assert set(module.__all__) == PUBLIC[package]
    assert len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:
        assert getattr(module, name) is not None, name
        assert name in dir(module), name


def test_the_root_keeps_todays_names_for_the_fronts_and_tools() -> None:
    import reliable_tcp
    from reliable_tcp.sync.channel import Channel

    assert reliable_tcp.Channel is Channel
    assert reliable_tcp.asyncio.Channel is importlib.import_module("reliable_tcp.asyncio.channel").Channel
    assert reliable_tcp.testing.FaultProxy.__name__ == "FaultProxy"
    assert callable(reliable_tcp.cli.rtcat) and callable(reliable_tcp.cli.rtproxy)
    with pytest.raises(AttributeError):
        reliable_tcp.no_such_name  # noqa: B018


def _modules_loaded_by(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(m for m in sys.modules if m.startswith('reliable_tcp')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return set(result.stdout.split())


def test_the_asyncio_front_loads_nothing_of_the_threaded_one() -> None:
    loaded = _modules_loaded_by("import reliable_tcp.asyncio")
    assert "reliable_tcp.asyncio.channel" in loaded
    assert not {m for m in loaded if m.startswith("reliable_tcp.sync")}


def test_the_root_loads_a_front_only_when_it_is_used() -> None:
    loaded = _modules_loaded_by("import reliable_tcp")
    assert not {m for m in loaded if m.startswith(("reliable_tcp.sync", "reliable_tcp.asyncio", "reliable_tcp.cli"))}
    assert "reliable_tcp.sync.channel" in _modules_loaded_by("import reliable_tcp\nreliable_tcp.connect")


def test_star_import_does_not_shadow_the_standard_asyncio() -> None:
    namespace: dict[str, object] = {}
    exec("import asyncio\nfrom reliable_tcp import *", namespace)  # noqa: S102
    assert namespace["asyncio"] is sys.modules["asyncio"]
    assert "connect" in namespace and "Channel" in namespace


#: What an application may call on a channel, on either front.
CHANNEL_API = {
    "abort", "acked_seq", "close", "commit", "flush", "last_committed_seq", "last_received_seq", "last_sent_seq",
    "max_sendable_size", "name", "recv", "recv_many", "restored", "send", "send_many", "session_id", "state",
    "statistics", "wait_acked",
}


@pytest.mark.parametrize("module", ["reliable_tcp.sync.channel", "reliable_tcp.asyncio.channel"])
def test_a_channel_shows_its_api_and_none_of_its_machinery(module: str) -> None:
    channel_class = importlib.import_module(module).Channel
    names = set(dir(channel_class))
    assert {name for name in names if not name.startswith("_")} == CHANNEL_API
    # The link's and the timers' callbacks live on the private session it holds.
    plumbing = {"fire_timers", "link_received", "link_output", "link_ended", "link_data", "link_lost", "link_writable"}
    assert not {name.lstrip("_") for name in names} & plumbing
    assert channel_class.__slots__ == ("_session", "__weakref__")
