"""An append-only, CRC-protected log of one session's durable state.

Groundwork for durable sessions (issue 8): the storage layer only; the
channel does not use it yet. A session's directory holds ``log`` (the
records) and ``lock`` (an exclusive ``flock`` held while the journal is
open, so two live processes can't share it).

Record layout (integers big-endian)::

    length u32 | crc32 u32 | type u8 | body (length - 1 bytes)

The CRC covers type and body. Opening the log replays every record; a
torn or corrupt tail (a crash in the middle of a write) ends the replay
and is cut off, so it is never mistaken for data. ``sync()`` makes
everything appended so far durable with one ``fsync`` however many threads
wait for it (group commit). ``compact()`` rewrites the live state into a
fresh file, so acknowledged data does not grow the disk without bound.
"""

from __future__ import annotations

import enum
import fcntl
import os
import struct
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from .exceptions import JournalLocked

__all__ = ["Journal", "JournalState"]

_HEAD = struct.Struct(">II")
_U64 = struct.Struct(">Q")
_SESSION = struct.Struct(">16s16s16s")  # id, secret, the secret before it (zeros if none)
MAX_RECORD = 64 * 1024 * 1024


class _Kind(enum.IntEnum):
    SESSION = 1  # session id, resume secret
    SENT = 2  # first seq u64, then messages: (length u32, bytes)*
    ACKED = 3  # cumulative ack u64: the peer has everything up to it
    CONSUMED = 4  # cumulative u64: the application confirmed everything up to it
    BASE = 5  # u64: numbering resumes here (written by compaction; all below is acknowledged)


@dataclass
class JournalState:
    """What the log says, after replay."""

    session_id: bytes = b""
    secret: bytes = b""
    #: The secret the client presented at the last resume (a server accepts
    #: it until the client confirms the new one); empty if none.
    previous_secret: bytes = b""
    next_seq: int = 1  # the sequence number the next sent message gets
    acked: int = 0
    consumed: int = 0
    unacked: dict[int, bytes] = field(default_factory=dict)  # seq -> payload, oldest first
    #: Bytes cut off the end at open because they were torn or corrupt.
    truncated_bytes: int = 0


class Journal:
    """One session's journal directory. Thread-safe."""

    def __init__(self, directory: str, *, fsync: bool = True) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self._fsync = fsync
        self._lock_fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise JournalLocked(f"journal {directory} is in use by another process") from None
        self._path = os.path.join(directory, "log")
        self.state = JournalState()
        self._mutex = threading.Lock()
        self._synced = threading.Condition(self._mutex)
        self._written = 0  # bytes appended (this open)
        self._durable = 0  # bytes known to be on disk
        self._syncing = False
        self._replay()
        self._file = open(self._path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the journal
        self._size = os.fstat(self._file.fileno()).st_size  # kept up to date, so size() needs no stat

    # ------------------------------------------------------------- replay

    def _replay(self) -> None:
        try:
            with open(self._path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        offset = 0
        while True:
            if len(data) - offset < _HEAD.size:
                break
            length, crc = _HEAD.unpack_from(data, offset)
            start = offset + _HEAD.size
            end = start + length
            if length < 1 or length > MAX_RECORD or end > len(data):
                break
            record = data[start:end]
            if zlib.crc32(record) != crc:
                break
            try:
                self._apply(record[0], memoryview(record)[1:])
            except (ValueError, struct.error):
                break  # a record that checks out but can't be read: treat like a torn tail
            offset = end
        if offset < len(data):
            self.state.truncated_bytes = len(data) - offset
            with open(self._path, "r+b") as f:
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())

    def _apply(self, kind: int, body: memoryview) -> None:
        state = self.state
        if kind == _Kind.SESSION:
            state.session_id, state.secret, previous = _SESSION.unpack(body)
            state.previous_secret = previous if any(previous) else b""
        elif kind == _Kind.SENT:
            (first,) = _U64.unpack_from(body)
            if first != state.next_seq:
                raise ValueError("SENT record out of sequence")
            offset = _U64.size
            seq = first
            while offset < len(body):
                (size,) = struct.unpack_from(">I", body, offset)
                offset += 4
                if offset + size > len(body):
                    raise ValueError("SENT record truncated")
                state.unacked[seq] = bytes(body[offset : offset + size])
                offset += size
                seq += 1
            state.next_seq = seq
        elif kind == _Kind.ACKED:
            (upto,) = _U64.unpack(body)
            for seq in range(state.acked + 1, min(upto, state.next_seq - 1) + 1):
                state.unacked.pop(seq, None)
            state.acked = max(state.acked, upto)
        elif kind == _Kind.CONSUMED:
            (upto,) = _U64.unpack(body)
            state.consumed = max(state.consumed, upto)
        elif kind == _Kind.BASE:
            (base,) = _U64.unpack(body)
            if state.unacked or base < state.next_seq:
                raise ValueError("BASE record after messages")
            state.next_seq = base
            state.acked = base - 1
        else:
            raise ValueError(f"unknown record kind {kind}")

    # ------------------------------------------------------------- append

    def _append(self, kind: _Kind, body: bytes) -> int:
        record = bytes([kind]) + body
        if len(record) > MAX_RECORD:
            raise ValueError("record too large for the journal")
        data = _HEAD.pack(len(record), zlib.crc32(record)) + record
        with self._mutex:
            self._file.write(data)
            self._apply(kind, memoryview(record)[1:])
            self._written += len(data)
            self._size += len(data)
            return self._written

    def record_session(self, session_id: bytes, secret: bytes, previous_secret: bytes = b"") -> int:
        """The session's id and current resume secret (and, on a server, the one
        still accepted until the client confirms). Returns a position for :meth:`sync`."""
        return self._append(_Kind.SESSION, _SESSION.pack(session_id, secret, previous_secret or bytes(16)))

    def record_sent(self, first_seq: int, payloads: Iterable[bytes]) -> int:
        """Messages handed to the channel, numbered from ``first_seq``."""
        parts = [_U64.pack(first_seq)]
        for payload in payloads:
            parts.append(struct.pack(">I", len(payload)))
            parts.append(payload)
        return self._append(_Kind.SENT, b"".join(parts))

    def record_acked(self, upto: int) -> int:
        """The peer acknowledged everything up to ``upto``."""
        return self._append(_Kind.ACKED, _U64.pack(upto))

    def record_consumed(self, upto: int) -> int:
        """The application confirmed every received message up to ``upto``."""
        return self._append(_Kind.CONSUMED, _U64.pack(upto))

    def sync(self, position: int | None = None) -> None:
        """Return once everything appended up to ``position`` (default: all) is on disk.

        Concurrent callers share one fsync: the first does it, the others
        wait for it (group commit).
        """
        with self._mutex:
            target = self._written if position is None else position
            while self._durable < target:
                if self._syncing:
                    self._synced.wait()
                    continue
                self._syncing = True
                goal = self._written
                self._mutex.release()
                try:
                    if self._fsync:
                        os.fsync(self._file.fileno())
                finally:
                    self._mutex.acquire()
                    self._syncing = False
                self._durable = max(self._durable, goal)
                self._synced.notify_all()

    # ------------------------------------------------------------ compact

    def size(self) -> int:
        """Bytes the log occupies on disk."""
        return self._size

    def compact(self) -> None:
        """Rewrite the live state (session, unacked messages, counters) into a
        fresh log, atomically: acknowledged data stops taking disk space."""
        with self._mutex:
            state = self.state
            first = min(state.unacked, default=state.next_seq)
            records: list[tuple[_Kind, bytes]] = []
            if state.session_id:
                previous = state.previous_secret or bytes(16)
                records.append((_Kind.SESSION, _SESSION.pack(state.session_id, state.secret, previous)))
            records.append((_Kind.BASE, _U64.pack(first)))
            records.append((_Kind.CONSUMED, _U64.pack(state.consumed)))
            if state.unacked:
                parts = [_U64.pack(first)]
                for seq in range(first, state.next_seq):
                    payload = state.unacked[seq]
                    parts.append(struct.pack(">I", len(payload)))
                    parts.append(payload)
                records.append((_Kind.SENT, b"".join(parts)))
            tmp = self._path + ".compact"
            with open(tmp, "wb") as f:
                for kind, body in records:
                    record = bytes([kind]) + body
                    f.write(_HEAD.pack(len(record), zlib.crc32(record)) + record)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            self._file.close()
            self._file = open(self._path, "ab", buffering=0)  # noqa: SIM115
            self._size = os.fstat(self._file.fileno()).st_size
            self._durable = self._written

    def discard(self) -> None:
        """Delete a closed journal's files: its session is over."""
        for name in ("log", "log.compact", "lock"):
            try:
                os.unlink(os.path.join(self.directory, name))
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self.directory)
        except OSError:
            pass  # not empty: someone else's files live there too

    def close(self) -> None:
        """Sync, close the log and release the lock."""
        self.sync()
        with self._mutex:
            self._file.close()
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
