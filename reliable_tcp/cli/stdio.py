"""Plain rtcat's end of its session: its input (stdin or ``--input``) and
its output (stdout or ``--output``), as a :class:`~reliable_tcp.cli.tunnel.Endpoint`
that :func:`~reliable_tcp.cli.tunnel.relay` carries with plain framing.

The input is read through ``poll`` beside a wake-up pipe, so that when the
session ends (or the far end's close cuts it short) a thread waiting on a
quiet pipe or a terminal is released at once instead of holding the
process until the next keystroke.
"""

from __future__ import annotations

import errno
import os
import select
import sys
from typing import BinaryIO, Protocol

from ..sync.channel import Channel

__all__ = ["Source", "Sink", "FdSource", "EmptySource", "FileSource", "StdoutSink", "FileSink", "StdioEndpoint",
           "claim_closed_stdio"]

#: The largest piece rtcat reads at once (a message, unless the peer takes less).
CHUNK = 128 * 1024


def claim_closed_stdio() -> tuple[bool, bool]:
    """Point a closed stdin, stdout or stderr (``rtcat <&-``) at /dev/null,
    so that no socket or file rtcat opens later takes descriptor 0, 1 or 2
    (reading a socket as stdin, or writing output into one, would be
    silent corruption). Returns (stdin was closed, stdout was closed)."""
    closed: list[int] = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
    for fd in closed:
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
    return 0 in closed, 1 in closed


class Source(Protocol):
    """Where rtcat's outgoing bytes come from."""

    interactive: bool

    def read(self, limit: int) -> bytes:
        """Up to ``limit`` bytes; b"" at the end of the input or once stopped."""

    def stop(self) -> bool:
        """End reading (waking a waiting :meth:`read`); True if input was left."""


class EmptySource:
    """No input: a closed stdin, or a ``-k`` session after the first."""

    interactive = False

    def read(self, limit: int) -> bytes:
        return b""

    def stop(self) -> bool:
        return False


class FdSource:
    """A descriptor (stdin) read as it comes: a pipe, a terminal, a file, /dev/null."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.interactive = os.isatty(fd)
        self._wake_read, self._wake_write = os.pipe()
        self._stopped = False
        self._ended = False

    def read(self, limit: int) -> bytes:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        while not self._stopped:
            ready = {fd for fd, _ in poller.poll()}
            if self._stopped:
                break
            if self._fd in ready:
                data = os.read(self._fd, min(CHUNK, limit))
                self._ended = not data
                return data
        return b""

    def stop(self) -> bool:
        if self._stopped:
            return False
        self._stopped = True
        os.write(self._wake_write, b"x")
        if self._ended or self.interactive:
            return False  # what a person had not typed yet was never input
        # More waiting now (a file, a pipe that holds bytes) is input this
        # session did not carry; a pipe with nothing in it has lost nothing.
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        if not poller.poll(0):
            return False
        try:
            return bool(os.read(self._fd, 1))
        except OSError:
            return False


class FileSource:
    """``--input FILE`` in fixed pieces: message n holds bytes
    ``[(n - 1) * size, n * size)``, so after a restart with a journal the
    file is read again from the first piece not yet durably sent."""

    interactive = False

    def __init__(self, file: BinaryIO, channel: Channel) -> None:
        self._file = file
        self.size = min(CHUNK, channel.max_sendable_size)
        self._length = os.fstat(file.fileno()).st_size
        file.seek(min(channel.last_sent_seq * self.size, self._length))
        self._stopped = False

    def read(self, limit: int) -> bytes:
        return b"" if self._stopped else self._file.read(self.size)

    def stop(self) -> bool:
        self._stopped = True
        return self._file.tell() < self._length


class Sink(Protocol):
    """Where rtcat's incoming bytes go."""

    def write(self, data: bytes) -> None:
        """All of ``data``; raises OSError when it can't be written."""

    def flush(self) -> None:
        """The far end's stream ended: make what was written final."""

    def finish(self) -> None:
        """The session ended cleanly."""

    def abandon(self) -> None:
        """The session failed: leave what was written as it is."""


class StdoutSink:
    """stdout (``closed``: the caller started rtcat with stdout closed)."""

    def __init__(self, *, closed: bool = False) -> None:
        self._closed = closed

    def write(self, data: bytes) -> None:
        if self._closed:
            raise BrokenPipeError(errno.EPIPE, "stdout is closed")
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        pass

    def abandon(self) -> None:
        pass


class FileSink:
    """``--output FILE``. With a journal, exactly once: a sidecar file
    records (last sequence number written, file length) before each
    commit, so a restart cuts off anything written after the last record
    and skips messages the file already holds."""

    def __init__(self, path: str, channel: Channel, *, journaled: bool) -> None:
        self._channel = channel
        self._journaled = journaled
        self._sidecar = path + ".rtcat-pos"
        self._written_seq, length = 0, 0
        try:
            with open(self._sidecar) as f:
                self._written_seq, length = (int(x) for x in f.read().split())
        except (FileNotFoundError, ValueError):
            pass
        self._out = open(path, "ab+")  # noqa: SIM115 - open for the session, closed by finish() or abandon()
        self._out.truncate(length)
        self._out.seek(length)

    def write(self, data: bytes) -> None:
        seq = self._channel.last_received_seq
        if seq > self._written_seq:
            self._out.write(data)
        if self._journaled:
            self._out.flush()
            os.fsync(self._out.fileno())
            self._record(max(seq, self._written_seq))

    def _record(self, seq: int) -> None:
        self._written_seq = seq
        tmp = self._sidecar + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # it holds where the transfer stands: private, like the journal
        with open(fd, "w") as f:
            f.write(f"{seq} {self._out.tell()}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._sidecar)
        self._channel.commit()

    def flush(self) -> None:
        self._out.flush()
        os.fsync(self._out.fileno())
        if self._journaled:
            self._channel.commit()  # the end message too: a restart need not see it again

    def finish(self) -> None:
        self.flush()
        self._out.close()
        try:
            os.unlink(self._sidecar)  # the transfer is complete
        except FileNotFoundError:
            pass

    def abandon(self) -> None:
        self._out.close()


class StdioEndpoint:
    """rtcat's input and output as one end of a carried stream."""

    def __init__(self, source: Source, sink: Sink) -> None:
        self.name = "rtcat"
        self.source = source
        self.sink = sink
        self.interactive = source.interactive
        self.aborted = False

    def read(self, limit: int) -> bytes:
        return b"" if self.aborted else self.source.read(limit)

    def write(self, data: bytes) -> None:
        self.sink.write(data)

    def end_writing(self) -> None:
        self.sink.flush()

    def stop_reading(self) -> bool:
        return self.source.stop()

    def abort(self) -> None:
        self.aborted = True
        self.source.stop()
        self.sink.abandon()  # an --output sidecar stays: a restart with the journal picks up from it

    def close(self) -> None:
        self.sink.finish()
