"""Session settings shared by the core and the threaded shell."""

from __future__ import annotations

from dataclasses import dataclass, field

from .frames import MAX_MESSAGE_SIZE_LIMIT, max_frame_body

__all__ = ["SessionConfig"]


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Timers and limits of one session. All durations are in seconds.

    ``dead_after`` (None) means three heartbeat intervals (the seed's
    heartbeat of 3 s gives 9 s). The retransmit window is bounded both by a
    message count and a byte total; whichever is reached first makes the
    window full.
    """

    heartbeat_interval: float = 3.0
    dead_after: float | None = None
    resume_window: float = 120.0
    handshake_timeout: float = 10.0
    window_messages: int = 8192
    window_bytes: int = 16 * 1024 * 1024
    #: Largest message this side sends or accepts. It is announced in the
    #: handshake when it differs from the protocol's default (1 MiB), and
    #: ``send`` also refuses messages larger than the peer's.
    max_message_size: int = 1024 * 1024
    #: Send an ACK once this many messages arrived without one ...
    ack_every: int = 512
    #: ... or this long after the first unacknowledged one arrived.
    ack_delay: float = 0.005
    #: A DATA frame's body is cut at this many bytes (messages, their
    #: 4-byte lengths and the 20-byte DATA header), or at the peer's frame
    #: limit when that is smaller; a single larger message gets a frame of its own.
    data_frame_target: int = 256 * 1024
    #: Frames that carry nothing new (PING, PONG, an ACK that frees nothing)
    #: a peer may send per second, with a burst of one second's worth;
    #: beyond it the session fails, so a flood of tiny frames can't starve
    #: everyone else. docs/protocol.md tells peers to stay under a tenth of
    #: the default. DATA is bounded by the receive queue instead.
    max_control_frames_per_second: int = 10_000
    #: A session whose connections end this many times in a row without
    #: moving a single message (nothing new received, nothing acknowledged)
    #: while it has messages to deliver is lost: resuming again would only
    #: replay the same bytes into the same failure.
    max_resumes_without_progress: int = 10
    #: Acknowledge only what the application committed (Channel.commit),
    #: not everything received: the peer then keeps, and after a restart of
    #: this side replays, whatever was not processed. For durable sessions.
    ack_on_commit: bool = False
    #: The quiet heartbeat (docs/protocol.md 6.1): a client asks for it in
    #: its HELLO, a server agrees. An idle session then PINGs (and PONGs)
    #: once per ``dead_after`` minus one interval (6 s with the defaults)
    #: instead of once per interval: half the frames, the dead verdict
    #: unchanged, one interval of slack left for a delayed frame.
    quiet_heartbeat: bool = True
    #: Pre-shared key: when set, every handshake (new or resume) runs the
    #: HMAC challenge-response of reliable_tcp.core.auth, and both sides must hold it.
    psk: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        positive = {
            "heartbeat_interval": self.heartbeat_interval,
            "dead_after": self.dead_after_seconds,
            "resume_window": self.resume_window,
            "handshake_timeout": self.handshake_timeout,
            "window_messages": self.window_messages,
            "window_bytes": self.window_bytes,
            "max_message_size": self.max_message_size,
            "ack_every": self.ack_every,
            "data_frame_target": self.data_frame_target,
            "max_control_frames_per_second": self.max_control_frames_per_second,
            "max_resumes_without_progress": self.max_resumes_without_progress,
        }
        for name, value in positive.items():
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.psk is not None and len(self.psk) < 16:
            raise ValueError("psk must be at least 16 bytes")
        if self.ack_delay < 0:
            raise ValueError(f"ack_delay must not be negative, got {self.ack_delay!r}")
        if self.dead_after_seconds <= self.heartbeat_interval:
            raise ValueError("dead_after must be longer than heartbeat_interval, or every quiet moment is a death")
        if self.ack_delay >= self.dead_after_seconds:
            raise ValueError("ack_delay must be shorter than dead_after")
        if self.window_bytes < self.max_message_size:
            raise ValueError("window_bytes must hold at least one message of max_message_size")
        if self.max_message_size > MAX_MESSAGE_SIZE_LIMIT:
            raise ValueError(f"max_message_size must be at most {MAX_MESSAGE_SIZE_LIMIT}")

    @property
    def max_frame_size(self) -> int:
        """Largest frame body this side accepts (docs/protocol.md section 9)."""
        return max_frame_body(self.max_message_size)

    @property
    def dead_after_seconds(self) -> float:
        """``dead_after``, or three heartbeat intervals when it was left unset
        (kept unset, so a changed heartbeat changes it too)."""
        return 3.0 * self.heartbeat_interval if self.dead_after is None else self.dead_after
