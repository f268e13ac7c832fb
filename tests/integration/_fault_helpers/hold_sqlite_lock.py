"""Hold a SQLite file's write lock from another OS process.

Usage: ``python hold_sqlite_lock.py PATH SECONDS``. Starts ``BEGIN IMMEDIATE``,
inserts a ``holder`` row into ``fault_log``, prints ``locked``, sleeps, commits
and prints ``committed``.
"""

from __future__ import annotations

import sqlite3
import sys
import time


def main(path: str, seconds: float) -> None:
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO fault_log (label) VALUES ('holder')")
        print("locked", flush=True)
        time.sleep(seconds)
        conn.execute("COMMIT")
        print("committed", flush=True)
    finally:
        conn.close()


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
