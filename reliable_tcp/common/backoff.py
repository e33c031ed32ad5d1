"""Reconnect policy: exponential backoff with jitter, and which errors to retry."""

from __future__ import annotations

import random
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

from ..exceptions import ProxyError, TLSHandshakeError
from .sockets import link_error_reason

__all__ = ["Backoff", "is_retryable"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between reconnect attempts.

    The ceiling starts at ``initial`` (a new connection beats waiting for
    TCP's own retransmission backoff) and grows by ``factor`` per attempt up
    to ``maximum``. Each delay is drawn between ``ceiling * (1 - jitter)``
    and the ceiling. The default, ``jitter=1.0``, is "full jitter": any
    delay from zero to the ceiling, so that clients cut at the same moment
    (a server restart, a blip in front of many of them) come back spread
    over the whole interval instead of in waves (measured in
    docs/reliability.md, "Many clients cut at once"). ``jitter=0`` gives
    exact doublings.
    """

    initial: float = 0.05
    maximum: float = 2.0
    factor: float = 2.0
    jitter: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        if self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("backoff needs factor >= 1 and 0 <= jitter <= 1")

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """An endless series of delays in seconds."""
        rng = rng or random.Random()
        delay = self.initial
        while True:
            yield delay * (1 - self.jitter * rng.random())
            delay = min(self.maximum, delay * self.factor)


def is_retryable(exc: BaseException, *, reconnect: bool = False) -> bool:
    """Whether a failed connection attempt is worth another try.

    Link errors (refused, reset, unreachable, timed out) are; so is our own
    connect timeout, and a temporary name-resolution failure. Before the
    first session a name that does not resolve is not (a typo fails fast);
    on a ``reconnect`` every resolution failure is: the name resolved
    before, and an offline resolver (airplane mode, a lost Wi-Fi) answers
    "no such name" (EAI_NONAME) as readily as "try again". A failed TLS
    handshake is likewise final before the first session (a certificate
    or a version will not fix itself) and transient on a ``reconnect``:
    the same server passed it before, so a captive portal or a middlebox
    answered this time. A proxy's refusal is final before the first
    session unless the proxy says it could not reach the listener
    (``ProxyError.transient``), and transient on a ``reconnect``: the same
    proxy let us through before. Usage errors never are.
    """
    if isinstance(exc, ProxyError):
        return reconnect or exc.transient
    if isinstance(exc, (TLSHandshakeError, ssl.SSLError)) or isinstance(exc.__cause__, ssl.SSLError):
        return reconnect
    if isinstance(exc, socket.gaierror):
        return reconnect or exc.errno == socket.EAI_AGAIN
    if isinstance(exc, TimeoutError):
        return True
    return isinstance(exc, OSError) and link_error_reason(exc) is not None
