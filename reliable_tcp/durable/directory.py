"""Managing journal directories: what sessions they hold, and removing them.

A journal directory is either one session's journal (``connect(journal=DIR)``:
``DIR/log`` and ``DIR/lock``) or a listener's (``listen(journal=DIR)``: one
such subdirectory per session, named by session id). Both are handled::

    for info in reliable_tcp.list_journals("/var/lib/myapp/sessions"):
        print(info.session_id, info.status, info.unacked_messages)
    reliable_tcp.remove_journal("/var/lib/myapp/sessions", "5a51...")

Listing never changes a journal and takes no lock that a live process
could notice; removing one refuses, with JournalLocked, while a live
process holds it. ``rtcat journal ls DIR`` and ``rtcat journal rm DIR
[SESSION | --all]`` do the same from the command line.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass

from ..exceptions import JournalLocked
from .journal import RETIRED_PREFIX, Journal, is_journal_directory, read_state

__all__ = ["JournalInfo", "list_journals", "remove_journal"]


@dataclass(frozen=True, slots=True)
class JournalInfo:
    """One journal (or one retired log) found in a directory.

    ``status`` is ``in use`` (a live process holds it), ``resumable`` (a
    restart resumes it), ``ended: closed`` / ``ended: lost`` / ``ended:
    aborted`` (it records how the session ended; a lost one is reported
    once by the next process that opens it), ``retired`` (a finished log
    kept for an operator), ``empty`` (no session yet) or ``damaged`` (a
    damaged record with intact records after it: opening the journal raises
    JournalDamaged; ``damage`` says where and what, and the counts are what
    the records before the damage say).
    """

    path: str
    session_id: str
    status: str
    unacked_messages: int
    unacked_bytes: int
    age_seconds: float
    end_reason: str = ""
    damage: str = ""


def _in_use(directory: str) -> bool:
    """Whether a live process holds the journal's lock (a shared, non-blocking
    probe: it fails only against an exclusive holder)."""
    try:
        fd = os.open(os.path.join(directory, "lock"), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _describe(path: str, log: str, *, retired: bool) -> JournalInfo:
    state, _, _ = read_state(log)
    try:
        age = time.time() - os.stat(log).st_mtime
    except FileNotFoundError:
        age = 0.0
    if state.damaged_at is not None:
        status = "damaged"
    elif retired:
        status = "retired"
    elif _in_use(path):
        status = "in use"
    elif state.ended is not None:
        status = f"ended: {state.ended.name.lower()}"
    elif state.session_id:
        status = "resumable"
    else:
        status = "empty"
    return JournalInfo(
        path=log if retired else path,
        session_id=state.session_id.hex(),
        status=status,
        unacked_messages=len(state.unacked),
        unacked_bytes=sum(map(len, state.unacked.values())),
        age_seconds=round(age, 1),
        end_reason=state.end_reason,
        damage=f"at byte {state.damaged_at}: {state.damage}" if state.damaged_at is not None else "",
    )


def _journal_dirs(directory: str) -> list[str]:
    """The journal directories inside ``directory`` (itself, or its subdirectories)."""
    if os.path.exists(os.path.join(directory, "lock")) or os.path.exists(os.path.join(directory, "log")):
        return [directory]
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no journal directory at {directory}")
    return [
        path
        for name in sorted(os.listdir(directory))
        if is_journal_directory(path := os.path.join(directory, name))
    ] + ([directory] if any(n.startswith(RETIRED_PREFIX) for n in os.listdir(directory)) else [])


def list_journals(directory: str) -> list[JournalInfo]:
    """Every journal (and retired log) in ``directory``, without changing any."""
    found = []
    for path in _journal_dirs(directory):
        names = os.listdir(path)
        if "log" in names or "lock" in names:
            found.append(_describe(path, os.path.join(path, "log"), retired=False))
        found.extend(
            _describe(path, os.path.join(path, name), retired=True) for name in sorted(names) if name.startswith(RETIRED_PREFIX)
        )
    return found


def remove_journal(directory: str, session_id: str | None = None, *, everything: bool = False) -> list[str]:
    """Delete journals from ``directory``: the one of ``session_id`` (a hex
    prefix is enough if it is unique), or with ``everything`` all of them,
    retired logs included. Returns what was removed. Raises JournalLocked
    while a live process holds one (nothing is removed then), and
    ValueError when ``session_id`` matches none or several."""
    infos = list_journals(directory)
    if not everything:
        if not session_id:
            raise ValueError("name a session, or remove everything")
        chosen = [i for i in infos if i.session_id.startswith(session_id.lower())]
        if len({i.session_id for i in chosen}) != 1:
            raise ValueError(f"{len({i.session_id for i in chosen})} sessions match {session_id!r}")
        infos = chosen
    busy = [i for i in infos if i.status == "in use"]
    if busy:
        raise JournalLocked(f"journal {busy[0].path} is in use by a live process")
    removed = []
    for info in infos:
        if info.status == "retired":
            os.unlink(info.path)
        else:
            # Taking the lock first: removal happens under it, like a close.
            Journal(info.path).close(discard=True)
        removed.append(info.path)
    return removed
