"""Keep a SQLite database open (``open``) or hold its write lock (``write``) from another process.

Usage: ``python sqlite_hold.py PATH open|write``. Prints ``ready`` once it holds
what was asked, and lets go (committing nothing) when its stdin closes.
"""

from __future__ import annotations

import sqlite3
import sys


def main(path: str, mode: str) -> None:
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
        if mode == "write":
            conn.execute("BEGIN IMMEDIATE")
        print("ready", flush=True)
        sys.stdin.read()
        if mode == "write":
            conn.execute("ROLLBACK")
    finally:
        conn.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
