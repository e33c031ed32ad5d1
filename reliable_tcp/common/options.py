"""Options of the threaded front end: typed keyword arguments and the objects behind them.

``connect(address, heartbeat_interval=1.0, ...)`` takes every field of
:class:`~reliable_tcp.core.config.SessionConfig` and of :class:`ShellOptions` as
a keyword argument, typed by :class:`ChannelOptions` (so ``mypy --strict``
checks names and types); ``config=`` and ``shell=`` take whole objects,
which keyword arguments then override. An unknown name is a ``TypeError``
at once, never a silent default.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from ..core.config import SessionConfig
from .backoff import Backoff
from .status import ChannelEvent

__all__ = ["ShellOptions", "ChannelOptions", "ListenOptions", "resolve_options"]


@dataclass(frozen=True, slots=True)
class ShellOptions:
    """Settings of the threaded shell (the session's own are in SessionConfig)."""

    #: connect(): how long to keep trying to open the first session (seconds).
    connect_timeout: float = 30.0
    #: Delays between connection attempts (connecting side).
    backoff: Backoff = Backoff()
    #: The receive queue: beyond either bound the reader stops reading.
    max_queued_messages: int = 65536
    max_queued_bytes: int = 64 * 1024 * 1024
    #: Called with a ChannelEvent on every state change, on a library thread
    #: shared by all channels: it must not block for long.
    on_event: Callable[[ChannelEvent], None] | None = None
    #: With a journal: recv() commits what it returned before (see Channel.commit).
    auto_commit: bool = True
    #: TLS: a client context (``ssl.create_default_context()``) for connect,
    #: a server context with its certificate for listen.
    ssl_context: ssl.SSLContext | None = None
    #: The name the server's certificate must carry (default: the host connected to).
    server_hostname: str | None = None

    def __post_init__(self) -> None:
        if self.connect_timeout <= 0 or self.max_queued_messages < 1 or self.max_queued_bytes < 1:
            raise ValueError("connect_timeout and the receive queue limits must be positive")


class ChannelOptions(TypedDict, total=False):
    """Keyword options of ``connect`` (and ``listen``): the fields of
    SessionConfig and ShellOptions, with their types."""

    heartbeat_interval: float
    dead_after: float | None
    resume_window: float
    handshake_timeout: float
    window_messages: int
    window_bytes: int
    max_message_size: int
    ack_every: int
    ack_delay: float
    data_frame_target: int
    max_control_frames_per_second: int
    max_resumes_without_progress: int
    quiet_heartbeat: bool
    psk: bytes | None
    connect_timeout: float
    backoff: Backoff
    max_queued_messages: int
    max_queued_bytes: int
    on_event: Callable[[ChannelEvent], None] | None
    auto_commit: bool
    ssl_context: ssl.SSLContext | None
    server_hostname: str | None


class ListenOptions(ChannelOptions, total=False):
    """Keyword options of ``listen``: a channel's, and the listener's limits."""

    max_sessions: int
    max_pending_handshakes: int
    backlog: int
    node_id: int | None


#: SessionConfig fields that are not options: set by the shell itself.
_INTERNAL = frozenset({"ack_on_commit"})
SESSION_OPTIONS = frozenset(f.name for f in dataclasses.fields(SessionConfig)) - _INTERNAL
SHELL_OPTIONS = frozenset(f.name for f in dataclasses.fields(ShellOptions))


def resolve_options(
    options: Mapping[str, Any],
    config: SessionConfig | None = None,
    shell: ShellOptions | None = None,
    *,
    extra: Collection[str] = (),
) -> tuple[SessionConfig, ShellOptions, dict[str, Any]]:
    """Apply keyword ``options`` over ``config`` and ``shell`` (or the
    defaults); return both objects and the ``extra`` options given.

    Raises TypeError for a name that is none of these, ValueError for a bad value.
    """
    unknown = set(options) - SESSION_OPTIONS - SHELL_OPTIONS - set(extra)
    if unknown:
        known = ", ".join(sorted(SESSION_OPTIONS | SHELL_OPTIONS | set(extra)))
        raise TypeError(f"unknown options: {', '.join(sorted(unknown))} (known: {known})")
    session = {k: v for k, v in options.items() if k in SESSION_OPTIONS}
    shell_changes = {k: v for k, v in options.items() if k in SHELL_OPTIONS}
    resolved_config = dataclasses.replace(config, **session) if config is not None else SessionConfig(**session)
    resolved_shell = dataclasses.replace(shell, **shell_changes) if shell is not None else ShellOptions(**shell_changes)
    return resolved_config, resolved_shell, {k: v for k, v in options.items() if k in extra}
