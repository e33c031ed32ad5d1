"""The public surface: what ``import reliable_tcp`` offers, documented."""

from __future__ import annotations

import inspect

import reliable_tcp

EXPECTED = {
    "AuthenticationFailed", "Backoff", "Channel", "ChannelBroken", "ChannelClosed", "ChannelEvent", "ChannelState",
    "ChannelStatistics", "FrameError", "FrameTooLarge", "Listener", "ListenerStatistics", "MessageTooLarge",
    "ProtocolError", "RejectedByPeer", "ReliableTCPError", "SessionConfig", "SessionLost", "ShellOptions", "UnsupportedVersion",
    "UsageError", "WindowFull", "connect", "listen", "load_psk",
}


def test_exports_are_exactly_the_public_surface() -> None:
    assert set(reliable_tcp.__all__) == EXPECTED
    for name in reliable_tcp.__all__:
        assert hasattr(reliable_tcp, name), name


def test_every_public_name_and_method_has_a_docstring() -> None:
    for name in reliable_tcp.__all__:
        obj = getattr(reliable_tcp, name)
        assert inspect.getdoc(obj), name
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not callable(member):
                    continue
                assert inspect.getdoc(member), f"{name}.{attr}"


def test_errors_form_one_tree() -> None:
    for name in reliable_tcp.__all__:
        obj = getattr(reliable_tcp, name)
        if inspect.isclass(obj) and issubclass(obj, Exception):
            assert issubclass(obj, reliable_tcp.ReliableTCPError), name
    assert issubclass(reliable_tcp.SessionLost, reliable_tcp.ChannelBroken)
    assert issubclass(reliable_tcp.MessageTooLarge, ValueError)
