"""An append-only, CRC-protected log of one session's durable state.

A session's directory (mode 0700) holds ``log`` (the records, mode 0600:
it holds the resume secret and every unacknowledged payload) and ``lock``
(an exclusive ``flock`` held while the journal is open, so two live
processes never share it; the files are deleted while it is held, and a
lock taken on a file that was just deleted is dropped and taken again).
``session_journal.py`` is how a channel uses it; ``directory.py`` how an
operator lists and removes them.

Record layout (integers big-endian)::

    length u32 | crc32 u32 | type u8 | body (length - 1 bytes)

The CRC covers type and body. Opening the log replays every record. A
torn tail (a crash in the middle of appending: an incomplete last record,
or space the file system allocated and never filled) ends the replay and
is cut off, so it is never mistaken for data. A damaged record that is
*not* a torn tail (a flipped bit, an overwritten block: the record is
whole but fails its check, or intact records follow it) is never cut:
the file stays byte for byte as it is and opening it raises
``JournalDamaged``, naming the file and the offset, because cutting there
would silently drop every later record. ``sync()`` makes
everything appended so far durable with one ``fsync`` however many threads
wait for it (group commit). ``compact()`` rewrites the live state into a
fresh file, so acknowledged data does not grow the disk without bound.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import logging
import os
import re
import stat
import struct
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import JournalDamaged, JournalLocked

__all__ = ["Journal", "JournalState", "Outcome", "is_journal_directory", "read_state", "secure_directory"]

logger = logging.getLogger(__name__)

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
    END = 6  # outcome u8, reason (UTF-8): how the session ended; nothing follows


class Outcome(enum.IntEnum):
    """How a journaled session ended (the END record)."""

    CLOSED = 1  # a complete close: nothing to resume, nothing to report
    LOST = 2  # resume window over, refused, failed: the unacknowledged are reported once
    ABORTED = 3  # the application aborted (it was handed the unacknowledged)


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
    #: Bytes cut off the end at open because they were a torn tail.
    truncated_bytes: int = 0
    #: Where a damaged record starts that is not a torn tail (intact
    #: records follow it, or it is whole but fails its check), and why;
    #: the state above is what the records before it say.
    damaged_at: int | None = None
    damage: str = ""
    #: How the session ended, if it did (an END record), and why.
    ended: Outcome | None = None
    end_reason: str = ""


def secure_directory(directory: str) -> None:
    """Create ``directory`` (mode 0700, whatever the umask), or check an
    existing one: wider permissions are tightened on directories we made,
    and reported loudly on one the operator made (its contents stay 0600)."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        mode = stat.S_IMODE(os.stat(directory).st_mode)
        if mode & 0o077:
            logger.warning(
                "journal directory %s is readable by others (mode %o); its journals are not (0600), "
                "but 'chmod 700' it to hide even the session ids", directory, mode,
            )
        return
    except FileNotFoundError:
        secure_directory(os.path.dirname(os.path.abspath(directory)))
        os.mkdir(directory, 0o700)
    os.chmod(directory, 0o700)  # mkdir's mode is masked by the umask


#: The files a journal writes in its directory (retired logs are
#: ``log.ended-<time>``); ``lock`` is the first, and stays until the journal
#: is deleted.
JOURNAL_FILES = frozenset({"lock", "log", "log.compact"})
RETIRED_PREFIX = "log.ended-"


def is_journal_directory(path: str) -> bool:
    """Whether ``path`` is a journal this library wrote: a directory holding
    nothing but the journal's own files, with its empty ``lock`` file (or,
    once a session's journal was deleted, only its retired logs). Anything
    else in a journal directory (``lost+found``, an operator's notes, a
    directory we can't read) is not ours: it is never read, changed or
    deleted."""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    if not names or not all(name in JOURNAL_FILES or name.startswith(RETIRED_PREFIX) for name in names):
        return False
    if "lock" not in names:
        return any(name.startswith(RETIRED_PREFIX) for name in names)
    try:
        lock = os.stat(os.path.join(path, "lock"), follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISREG(lock.st_mode) and lock.st_size == 0


def _apply(state: JournalState, kind: int, body: memoryview) -> None:
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
    elif kind == _Kind.END:
        state.ended = Outcome(body[0])
        state.end_reason = bytes(body[1:]).decode("utf-8", "replace")
    elif kind == _Kind.BASE:
        (base,) = _U64.unpack(body)
        if state.unacked or base < state.next_seq:
            raise ValueError("BASE record after messages")
        state.next_seq = base
        state.acked = base - 1
    else:
        raise ValueError(f"unknown record kind {kind}")


def read_state(path: str) -> tuple[JournalState, int, int]:
    """Replay the log at ``path`` without changing it: the state, the
    offset where the good records end, and the file's size. A torn tail
    ends the replay; damage that is not one also sets ``damaged_at``."""
    state = JournalState()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return state, 0, 0
    size = len(data)
    view = memoryview(data)
    offset = 0
    while size - offset >= _HEAD.size:
        length, crc = _HEAD.unpack_from(data, offset)
        end = offset + _HEAD.size + length
        if 1 <= length <= MAX_RECORD and end <= size and zlib.crc32(view[offset + _HEAD.size : end]) == crc:
            try:
                _apply(state, data[offset + _HEAD.size], view[offset + _HEAD.size + 1 : end])
            except (ValueError, struct.error) as exc:
                # It passed its check, so it is what was written: not a torn
                # write but a record this code can't read (or a bug).
                state.damaged_at, state.damage = offset, f"a record that can't be read ({exc})"
                break
            offset = end
            continue
        damage = _damage(data, offset, length, crc)
        if damage:
            state.damaged_at, state.damage = offset, damage
        break
    return state, offset, size


#: A record's type byte: where a record may begin (the header is the 8 bytes before it).
_KIND_BYTE = re.compile(b"[" + bytes([min(_Kind), ord("-"), max(_Kind)]) + b"]")


def _damage(data: bytes, offset: int, length: int, crc: int) -> str:
    """Why the bad record at ``offset`` is damage, or "" if it is a torn tail.

    A crash in the middle of an append leaves a prefix of the record (the
    header as written, the body cut short), or a stretch of zeros where the
    file system allocated space and the data never arrived; nothing can
    follow it. Anything else is damage."""
    if data.count(0, offset) == len(data) - offset:
        return ""
    if not 1 <= length <= MAX_RECORD:
        return "a record header with an impossible length"
    if offset + _HEAD.size + length <= len(data):
        return "a whole record that fails its checksum"
    if zlib.crc32(memoryview(data)[offset + _HEAD.size :]) == crc:
        return "a record whose length field is damaged (the rest of the file checks out as its body)"
    intact = _intact_record_after(data, offset)
    if intact is not None:
        return f"a damaged record followed by intact records (the first at byte {intact})"
    return ""


def _intact_record_after(data: bytes, damaged: int) -> int | None:
    """The offset of the first whole record after ``damaged`` that passes
    its check and is followed by the end of the file or by something that
    looks like another record header, or None.

    Only candidates whose type byte is valid are looked at, and the check
    on what follows spares a checksum over most random positions inside a
    large torn payload; the scan runs only when a journal is damaged."""
    size = len(data)
    view = memoryview(data)
    for match in _KIND_BYTE.finditer(data, damaged + 1 + _HEAD.size):
        start = match.start() - _HEAD.size
        length, crc = _HEAD.unpack_from(data, start)
        end = start + _HEAD.size + length
        if not 1 <= length <= MAX_RECORD or end > size:
            continue
        if size - end > _HEAD.size:
            (next_length,) = struct.unpack_from(">I", data, end)
            if not (1 <= next_length <= MAX_RECORD and min(_Kind) <= data[end + _HEAD.size] <= max(_Kind)):
                continue
        if zlib.crc32(view[start + _HEAD.size : end]) == crc:
            return start
    return None


class Journal:
    """One session's journal directory. Thread-safe."""

    def __init__(self, directory: str, *, fsync: bool = True) -> None:
        secure_directory(directory)
        self.directory = directory
        self._fsync = fsync
        self._lock_fd = self._take_lock(os.path.join(directory, "lock"))
        self._path = os.path.join(directory, "log")
        self.state = JournalState()
        self._mutex = threading.Lock()
        self._synced = threading.Condition(self._mutex)
        self._written = 0  # bytes appended (this open)
        self._durable = 0  # bytes known to be on disk
        self._syncing = False
        self._broken: OSError | None = None  # a failed write that could not be rolled back
        try:
            self._replay()
            self._file = self._open_log()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._size = os.fstat(self._file.fileno()).st_size  # kept up to date, so size() needs no stat

    def _take_lock(self, path: str) -> int:
        """The exclusive lock on ``path``, on the file the path names now."""
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise JournalLocked(f"journal {self.directory} is in use by another process") from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.fchmod(fd, 0o600)
                return fd
            # The holder deleted the journal while we waited for its lock:
            # this lock guards nothing; take the one the path names now.
            os.close(fd)

    def _open_log(self) -> Any:
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)
        return os.fdopen(fd, "ab", buffering=0)

    # ------------------------------------------------------------- replay

    def _replay(self) -> None:
        self.state, good, size = read_state(self._path)
        if self.state.damaged_at is not None:
            raise JournalDamaged(
                f"journal {self._path} is damaged at byte {self.state.damaged_at}: {self.state.damage}; "
                "it was left exactly as it is (see 'A damaged journal' in docs/durability.md)",
                self._path, self.state.damaged_at,
            )
        if good < size:
            self.state.truncated_bytes = size - good
            with open(self._path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())

    def _apply(self, kind: int, body: memoryview) -> None:
        _apply(self.state, kind, body)

    # ------------------------------------------------------------- append

    def _append(self, kind: _Kind, body: bytes) -> int:
        """Write one record whole, or not at all: a short or failed write is
        rolled back to the end of the last good record, then raised."""
        record = bytes([kind]) + body
        if len(record) > MAX_RECORD:
            raise ValueError("record too large for the journal")
        data = _HEAD.pack(len(record), zlib.crc32(record)) + record
        with self._mutex:
            if self._broken is not None:
                raise OSError(self._broken.errno, f"journal unusable after a failed write: {self._broken}")
            start = self._size
            try:
                self._write_all(data)
            except OSError as exc:
                self._roll_back(start, exc)
                raise
            self._apply(kind, memoryview(record)[1:])
            self._written += len(data)
            self._size += len(data)
            return self._written

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            count = self._file.write(view)  # a raw file: a disk nearly full writes part of it
            if not count:
                raise OSError(errno.EIO, "the journal write made no progress")
            view = view[count:]

    def _roll_back(self, good: int, cause: OSError) -> None:
        """Cut a partial record off (freeing space is what a full disk allows)."""
        try:
            os.ftruncate(self._file.fileno(), good)
        except OSError as exc:  # pragma: no cover - the device itself is failing
            self._broken = cause
            logger.error("journal %s: could not roll back a failed write: %s", self.directory, exc)

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

    def record_end(self, outcome: Outcome, reason: str) -> int:
        """How the session ended; a journal with this record is not resumed."""
        return self._append(_Kind.END, bytes([outcome]) + reason.encode("utf-8")[:1000])

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
        """Rewrite the live state (session, unacked messages, counters, end)
        into a fresh log, atomically: acknowledged data stops taking disk
        space. On failure the old log stays as it was."""
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
            if state.ended is not None:
                records.append((_Kind.END, bytes([state.ended]) + state.end_reason.encode("utf-8")))
            tmp = self._path + ".compact"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    for kind, body in records:
                        record = bytes([kind]) + body
                        f.write(_HEAD.pack(len(record), zlib.crc32(record)) + record)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self._path)
            except OSError:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            self._fsync_directory()
            self._file.close()
            self._file = self._open_log()
            self._size = os.fstat(self._file.fileno()).st_size
            self._durable = self._written

    def _fsync_directory(self) -> None:
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def close(self, *, discard: bool = False, retire: bool = False) -> None:
        """Sync, close the log and release the lock.

        ``discard``: the session is over; delete the journal's files (while
        the lock is still held, so no other process can open them in
        between). ``retire``: keep the log for an operator, renamed
        ``log.ended-<time>``, so the directory starts a new session next time.
        """
        try:
            if not discard:
                self.sync()
        finally:
            with self._mutex:
                self._file.close()
            try:
                if discard:
                    for name in ("log", "log.compact", "lock"):
                        try:
                            os.unlink(os.path.join(self.directory, name))
                        except FileNotFoundError:
                            pass
                    try:
                        os.rmdir(self.directory)
                    except OSError:
                        pass  # not empty: someone else's files live there too
                elif retire and os.path.exists(self._path):
                    stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9:09d}"
                    os.replace(self._path, os.path.join(self.directory, RETIRED_PREFIX + stamp))
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
