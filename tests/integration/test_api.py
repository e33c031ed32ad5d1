"""The public surface: what ``import reliable_tcp`` offers, documented (the
names themselves: test_exports.py)."""

from __future__ import annotations

import inspect

import reliable_tcp

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


def test_every_exception_lives_in_the_drawn_tree_and_what_can_escape_is_exported() -> None:
    from reliable_tcp import exceptions

    tree = inspect.getdoc(exceptions) or ""
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        assert issubclass(cls, reliable_tcp.ReliableTCPError), name
        assert name in tree, f"{name} is not drawn in the exceptions module docstring"
        if name != "HandshakeRejected":  # internal: never leaves the listener
            assert name in reliable_tcp.__all__, name
    assert issubclass(reliable_tcp.InvalidState, RuntimeError)


def test_typed_options_name_every_field_and_nothing_else() -> None:
    import typing

    from reliable_tcp.common.options import SESSION_OPTIONS, SHELL_OPTIONS

    assert set(typing.get_type_hints(reliable_tcp.ChannelOptions)) == SESSION_OPTIONS | SHELL_OPTIONS
    assert set(typing.get_type_hints(reliable_tcp.ListenOptions)) == SESSION_OPTIONS | SHELL_OPTIONS | {
        "max_sessions", "max_pending_handshakes", "backlog", "node_id"
    }


def test_unknown_options_are_refused_at_once() -> None:
    import pytest

    with pytest.raises(TypeError, match="heartbeat_intervall"):
        reliable_tcp.connect(("127.0.0.1", 9), heartbeat_intervall=1.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="max_session"):
        reliable_tcp.listen(("127.0.0.1", 0), max_session=3)  # type: ignore[call-arg]
