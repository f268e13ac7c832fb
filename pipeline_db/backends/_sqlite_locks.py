"""Which processes hold a SQLite database's locks, read from Linux's ``/proc/locks``.

SQLite's unix VFS locks byte ranges with POSIX advisory locks (``os_unix.c``,
https://www.sqlite.org/walformat.html#the_wal_index_file_format): in WAL mode
every process with the database open holds a shared lock on the ``-shm``
file's "DMS" byte (128) and on the database file's shared range, and the writer
holds byte 120 of ``-shm`` exclusively; in the rollback modes the writer holds
the RESERVED byte of the database file.

``/proc/locks`` is read rather than asked with ``fcntl(F_GETLK)``: that would
need a descriptor of the file, and closing any descriptor drops every POSIX
lock the process holds on it, SQLite's own included. Elsewhere than Linux the
answers are ``None`` (unknown).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC_LOCKS = Path("/proc/locks")
SHM_WRITE_BYTE = 120
SHM_DMS_BYTE = 128
RESERVED_BYTE = 0x4000_0001


@dataclass(frozen=True, slots=True)
class FileLock:
    """One POSIX lock on a file: who holds it, how, and over which bytes."""

    pid: int
    exclusive: bool
    start: int
    end: int | None  # None: to the end of the file

    def covers(self, offset: int) -> bool:
        """Whether the lock covers byte ``offset``."""
        return self.start <= offset and (self.end is None or offset <= self.end)


def locks_on(path: Path) -> list[FileLock] | None:
    """The POSIX locks held on ``path`` (none if it does not exist); None when unknowable."""
    try:
        table = PROC_LOCKS.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    try:
        stat = path.stat()
    except FileNotFoundError:
        return []
    key = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    found = []
    for line in table.splitlines():
        fields = line.split()
        # "1: POSIX  ADVISORY  WRITE 4242 fe:00:2164994 120 120"; waiters have "->".
        if len(fields) != 8 or fields[1] != "POSIX" or fields[5] != key:
            continue
        end = None if fields[7] == "EOF" else int(fields[7])
        found.append(FileLock(int(fields[4]), fields[3] == "WRITE", int(fields[6]), end))
    return found


def processes_with_open(database: Path) -> set[int] | None:
    """Other processes that have the database open (WAL mode); None when unknowable.

    A process whose connections are all closed holds nothing; in the rollback
    journal modes an idle connection holds nothing either.
    """
    found: set[int] = set()
    for path in (database, Path(f"{database}-shm")):
        locks = locks_on(path)
        if locks is None:
            return None
        found.update(lock.pid for lock in locks)
    found.discard(os.getpid())
    return found


def write_lock_holders(database: Path) -> list[int] | None:
    """Processes (this one included) holding the database's write lock; None when unknowable."""
    shm = locks_on(Path(f"{database}-shm"))
    main = locks_on(database)
    if shm is None or main is None:
        return None
    holders = {lock.pid for lock in shm if lock.exclusive and lock.covers(SHM_WRITE_BYTE)}
    holders |= {lock.pid for lock in main if lock.exclusive and lock.covers(RESERVED_BYTE)}
    return sorted(holders)
