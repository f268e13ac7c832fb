"""Real faults on real databases, and what `Database` makes of them.

Every fault here is caused for real, never mocked: a PostgreSQL backend killed
with ``pg_terminate_backend`` (mid-transaction and mid-COMMIT), write skew under
SERIALIZABLE, a deadlock, a SQLite write lock held by another OS process,
writers racing on one SQLite file from 50 tasks and from 4 processes, and
tasks cancelled mid-statement, mid-checkout and mid-COMMIT.

Concurrent steps are ordered with asyncio barriers and events (and, across
processes, with lines on a pipe), never with sleeps, so each run takes the
same path.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import (
    Boolean,
    Column,
    Integer,
    MetaData,
    Table,
    Text,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from pipeline_db import CommitOutcomeUnknownError, Database, DatabaseConfig, TransientError

HELPERS = Path(__file__).parent / "_fault_helpers"
REPO = Path(__file__).parents[2]
#: Upper bound on any wait for the other side of a fault; reached only when a test fails.
STEP_TIMEOUT_S = 10.0

# Direct parametrisation overrides conftest's `backend` fixture for one test.
postgresql_only = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgresql)]
)
sqlite_only = pytest.mark.parametrize("backend", [pytest.param("sqlite", marks=pytest.mark.sqlite)])

# Tables of this module only, so the faults do not depend on the pipeline schema.
faults = MetaData()
log = Table("fault_log", faults, Column("label", Text, nullable=False))  # no key: doubles show
keyed = Table(
    "fault_keyed",
    faults,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("label", Text, nullable=False),
)
doctors = Table(
    "fault_doctors",
    faults,
    Column("name", Text, primary_key=True),
    Column("on_call", Boolean, nullable=False),
)
counters = Table(
    "fault_counters",
    faults,
    Column("name", Text, primary_key=True),
    Column("value", Integer, nullable=False),
)


@pytest.fixture
async def db(db: Database) -> AsyncIterator[Database]:
    """conftest's fresh database, with this module's tables and rows."""

    async def create(conn: AsyncConnection) -> None:
        await conn.run_sync(faults.create_all)
        await conn.execute(
            insert(counters), [{"name": name, "value": 0} for name in ("total", "a", "b")]
        )
        await conn.execute(
            insert(doctors), [{"name": "alice", "on_call": True}, {"name": "bob", "on_call": True}]
        )

    await db.transaction(create)
    yield db


# -- helpers -------------------------------------------------------------------


async def labels(db: Database) -> list[str]:
    async with db.read() as conn:
        return sorted((await conn.execute(select(log.c.label))).scalars())


async def counter(db: Database, name: str) -> int:
    async with db.read() as conn:
        query = select(counters.c.value).where(counters.c.name == name)
        return int((await conn.execute(query)).scalar_one())


async def bump(conn: AsyncConnection, name: str) -> None:
    """Add one to a counter (takes its row lock on PostgreSQL)."""
    await conn.execute(
        update(counters).where(counters.c.name == name).values(value=counters.c.value + 1)
    )


async def read_then_write(conn: AsyncConnection, label: str) -> None:
    """Read the total, write it back plus one, log ``label``: lost updates would show."""
    total = (await conn.execute(select(counters.c.value).where(counters.c.name == "total"))).one()
    await conn.execute(
        update(counters).where(counters.c.name == "total").values(value=total.value + 1)
    )
    await conn.execute(insert(log).values(label=label))


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until it holds; fail the test after STEP_TIMEOUT_S."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def admin_dsn(config: DatabaseConfig) -> str:
    """A libpq DSN for asyncpg to the database under test."""
    url = config.sqlalchemy_url().set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


async def admin_fetchval(db: Database, query: str, *args: Any) -> Any:
    """Run one query on a separate, plain asyncpg connection to the database under test."""
    conn = await asyncpg.connect(admin_dsn(db.config))
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def terminate_backend(db: Database, pid: int) -> None:
    """Kill a server process and wait (up to 5 s) until it has exited."""
    assert await admin_fetchval(db, "SELECT pg_terminate_backend($1, 5000)", pid)


async def backend_pid(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.pg_backend_pid()))).scalar_one())


async def sessions(db: Database, state: str) -> int:
    """Sessions of the database under test in ``state`` (pg_stat_activity)."""
    return int(
        await admin_fetchval(
            db,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state = $1",
            state,
        )
    )


async def sleeping(db: Database, pid: int, query: str = "%") -> bool:
    """Whether server process ``pid`` is in ``pg_sleep``, running a statement like ``query``."""
    return bool(
        await admin_fetchval(
            db,
            "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1 AND state = 'active'"
            " AND wait_event = 'PgSleep' AND query ILIKE $2)",
            pid,
            query,
        )
    )


async def exited(db: Database, pid: int) -> bool:
    """Whether server process ``pid`` has ended."""
    return not await admin_fetchval(
        db, "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)", pid
    )


async def make_commits_slow(db: Database) -> None:
    """Make every COMMIT that inserted into fault_keyed sleep 2 s in a deferred trigger."""
    conn = await asyncpg.connect(admin_dsn(db.config))
    try:
        await conn.execute(
            """
            CREATE FUNCTION fault_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$;
            CREATE CONSTRAINT TRIGGER fault_slow_commit AFTER INSERT ON fault_keyed
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fault_slow_commit();
            """
        )
    finally:
        await conn.close()


async def assert_recovered(db: Database, absent: str) -> None:
    """After a cancelled transaction: no leaked connection, no trace, and the Database works."""
    assert db.pool_status().checked_out == 0
    assert absent not in await labels(db)
    total = await counter(db, "total")
    for n in range(3):
        await db.transaction(lambda conn, n=n: read_then_write(conn, f"after{n}"))
    assert {"after0", "after1", "after2"} <= set(await labels(db))
    assert await counter(db, "total") == total + 3
    assert db.pool_status().checked_out == 0
    if db.dialect == "postgresql":
        # The server may take a moment to notice a closed client socket.
        async def none_idle_in_transaction() -> bool:
            return await sessions(db, "idle in transaction") == 0

        await eventually(none_idle_in_transaction, "no session idle in transaction")


async def spawn(script: str, *args: object, stdin: bool = False) -> asyncio.subprocess.Process:
    """Start a helper script of _fault_helpers in another Python process."""
    # The helpers import the same pipeline_db as the tests, installed or not.
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(HELPERS / script),
        *map(str, args),
        stdin=asyncio.subprocess.PIPE if stdin else None,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": path},
    )


async def expect_line(process: asyncio.subprocess.Process, line: bytes) -> None:
    assert process.stdout is not None
    got = await asyncio.wait_for(process.stdout.readline(), STEP_TIMEOUT_S)
    assert got == line, f"expected {line!r}, got {got!r}"


async def hold_write_lock(path: Path, seconds: float) -> asyncio.subprocess.Process:
    """Another process takes the SQLite write lock (and logs ``holder``) for ``seconds``."""
    holder = await spawn("hold_sqlite_lock.py", path, seconds)
    await expect_line(holder, b"locked\n")
    return holder


# -- PostgreSQL: a killed backend, write skew, a deadlock ------------------------------


@postgresql_only
async def test_backend_killed_mid_transaction_is_retried_and_applied_once(db: Database) -> None:
    runs = 0

    async def work(conn: AsyncConnection) -> None:
        nonlocal runs
        runs += 1
        await conn.execute(insert(log).values(label="once"))
        if runs == 1:
            # Killed from another connection, between two statements of the work.
            await terminate_backend(db, await backend_pid(conn))
        await bump(conn, "total")

    await db.transaction(work)

    assert runs == 2
    assert await labels(db) == ["once"]
    assert await counter(db, "total") == 1
    assert db.retries["connection"] + db.retries["shutdown"] >= 1


@postgresql_only
async def test_write_skew_under_serializable_is_retried_to_a_serial_outcome(
    db: Database,
) -> None:
    # Each doctor may go off call only if another one stays on call.
    both_read = asyncio.Barrier(2)
    runs: Counter[str] = Counter()

    async def go_off_call(name: str) -> bool:
        async def work(conn: AsyncConnection) -> bool:
            runs[name] += 1
            query = select(func.count()).select_from(doctors).where(doctors.c.on_call)
            on_call = (await conn.execute(query)).scalar_one()
            if runs[name] == 1:
                await asyncio.wait_for(both_read.wait(), STEP_TIMEOUT_S)
            if on_call < 2:
                return False
            await conn.execute(update(doctors).where(doctors.c.name == name).values(on_call=False))
            return True

        return await db.transaction(work, isolation="SERIALIZABLE")

    outcomes = await asyncio.gather(go_off_call("alice"), go_off_call("bob"))

    assert sorted(outcomes) == [False, True]  # as if one ran after the other
    assert min(runs.values()) == 1  # the first to commit ran once ...
    assert max(runs.values()) >= 2  # ... the other was retried
    assert db.retries["serialization"] >= 1
    async with db.read() as conn:
        query = select(func.count()).select_from(doctors).where(doctors.c.on_call)
        assert (await conn.execute(query)).scalar_one() == 1


@postgresql_only
@pytest.mark.slow
async def test_deadlock_is_retried_and_both_transactions_commit(db: Database) -> None:
    both_locked = asyncio.Barrier(2)
    runs: Counter[str] = Counter()

    async def lock_in_order(first: str, second: str) -> None:
        async def work(conn: AsyncConnection) -> None:
            runs[first] += 1
            await bump(conn, first)
            if runs[first] == 1:
                await asyncio.wait_for(both_locked.wait(), STEP_TIMEOUT_S)
            await bump(conn, second)  # waits for the other's lock: a cycle

        await db.transaction(work)

    # The server breaks the cycle after deadlock_timeout (1 s by default).
    await asyncio.gather(lock_in_order("a", "b"), lock_in_order("b", "a"))

    assert db.retries["deadlock"] >= 1
    assert sum(runs.values()) == 3  # one victim, retried once
    assert await counter(db, "a") == 2
    assert await counter(db, "b") == 2


# -- SQLite: another process holds the write lock -------------------------------------


@sqlite_only
@pytest.mark.slow
@pytest.mark.parametrize("path", ["transaction", "run_sync"])
async def test_writer_waits_for_another_process_holding_the_write_lock(
    db: Database, path: str
) -> None:
    # transaction(): aiosqlite and SQLite's busy handler; run_sync(): a worker
    # thread that retries BEGIN IMMEDIATE itself, every millisecond at most.
    run = db.transaction if path == "transaction" else db.run_sync
    holder = await hold_write_lock(db.config.path, 2.0)
    started = time.monotonic()

    await run(lambda conn: conn.execute(insert(log).values(label="writer")))

    waited = time.monotonic() - started
    assert await holder.wait() == 0
    assert waited > 1.0  # it waited for the lock (busy_timeout is 5 s) ...
    assert not db.retries  # ... within one attempt, without failing it
    assert await labels(db) == ["holder", "writer"]


@sqlite_only
@pytest.mark.slow
@pytest.mark.parametrize("path", ["transaction", "run_sync"])
async def test_write_lock_held_past_the_deadline_names_the_cause(
    db: Database, make_config: Callable[..., DatabaseConfig], path: str
) -> None:
    config = make_config(
        busy_timeout=200,
        retry={"attempts": 50, "deadline": 1.0, "base_delay": 0.02, "max_delay": 0.1},
    )
    holder = await hold_write_lock(db.config.path, 3.0)
    runs = 0

    async def work(conn: AsyncConnection) -> None:
        nonlocal runs
        runs += 1
        await conn.execute(insert(log).values(label="writer"))

    def sync_work(conn: Connection) -> None:
        nonlocal runs
        runs += 1
        conn.execute(insert(log).values(label="writer"))

    async with Database(config) as impatient:
        with pytest.raises(TransientError) as caught:
            if path == "transaction":
                await impatient.transaction(work)
            else:
                await impatient.run_sync(sync_work)
    assert holder.returncode is None  # gave up while the lock was still held

    error = caught.value
    assert (error.cause, error.code) == ("busy", "SQLITE_BUSY")
    assert "busy (SQLITE_BUSY)" in str(error)
    assert "deadline" in str(error)
    assert error.attempts > 1
    assert runs == 0  # BEGIN IMMEDIATE never got the lock, so the work never ran
    assert await holder.wait() == 0
    assert await labels(db) == ["holder"]


# -- SQLite: many writers on one file --------------------------------------------------


@sqlite_only
async def test_fifty_tasks_reading_then_writing_lose_nothing(db: Database) -> None:
    tasks, transactions = 50, 4

    async def writer(task: int) -> None:
        for n in range(transactions):
            await db.transaction(lambda conn, n=n: read_then_write(conn, f"t{task}-{n}"))

    results = await asyncio.gather(*(writer(t) for t in range(tasks)), return_exceptions=True)

    assert [r for r in results if r is not None] == []
    assert await counter(db, "total") == tasks * transactions
    expected = sorted(f"t{t}-{n}" for t in range(tasks) for n in range(transactions))
    assert await labels(db) == expected
    assert db.pool_status().checked_out == 0


@sqlite_only
@pytest.mark.slow
async def test_four_processes_reading_then_writing_one_file_lose_nothing(db: Database) -> None:
    processes, tasks, transactions = 4, 5, 10
    writers = [
        await spawn("sqlite_writer.py", db.config.path, f"p{p}", tasks, transactions, stdin=True)
        for p in range(processes)
    ]
    for writer in writers:
        await expect_line(writer, b"ready\n")
    for writer in writers:  # start them together, so they contend for the lock
        assert writer.stdin is not None
        writer.stdin.write(b"go\n")
        await writer.stdin.drain()

    outputs = await asyncio.wait_for(
        asyncio.gather(*(writer.communicate() for writer in writers)), STEP_TIMEOUT_S
    )

    for writer, (stdout, stderr) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, stderr.decode()
        assert json.loads(stdout)["errors"] == []
        assert b"database is locked" not in stderr
    assert await counter(db, "total") == processes * tasks * transactions
    expected = sorted(
        f"p{p}-{t}-{n}" for p in range(processes) for t in range(tasks) for n in range(transactions)
    )
    assert await labels(db) == expected


# -- cancellation -----------------------------------------------------------------------


@pytest.mark.parametrize("where", ["in_statement", "between_statements"])
async def test_cancelled_mid_transaction_leaves_no_trace(
    db: Database, backend: str, where: str
) -> None:
    written = asyncio.Event()
    pids: list[int] = []

    async def work(conn: AsyncConnection) -> None:
        if backend == "postgresql":
            pids.append(await backend_pid(conn))
        await conn.execute(insert(log).values(label="cancelled"))
        await bump(conn, "total")  # a row lock that the transactions after it need
        written.set()
        if where == "between_statements":
            await asyncio.sleep(30)
        elif backend == "postgresql":
            await conn.execute(text("SELECT pg_sleep(30)"))
        else:  # a query that runs for minutes
            await conn.execute(
                text(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)"
                    " SELECT count(*) FROM c"
                )
            )

    task = asyncio.create_task(db.transaction(work))
    await asyncio.wait_for(written.wait(), STEP_TIMEOUT_S)
    if where == "in_statement" and backend == "postgresql":

        async def in_pg_sleep() -> bool:
            return await sleeping(db, pids[0])

        await eventually(in_pg_sleep, "pg_sleep to run")
    elif where == "in_statement":
        # aiosqlite's worker thread picks the statement up at once; nothing shows it.
        await asyncio.sleep(0.1)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert time.monotonic() - started < 3.0  # cancellation is prompt
    await assert_recovered(db, absent="cancelled")


async def test_cancelled_while_waiting_for_a_connection(
    db: Database, make_config: Callable[..., DatabaseConfig]
) -> None:
    async with Database(make_config(pool_size=1, max_overflow=0)) as small:
        async with small.read():  # the only connection
            task = asyncio.create_task(
                small.transaction(lambda conn: conn.execute(insert(log).values(label="queued")))
            )

            async def queued() -> bool:
                return small.pool_status().waiting == 1

            await eventually(queued, "the transaction to wait for the pool")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert small.pool_status().waiting == 0

        await assert_recovered(small, absent="queued")


@postgresql_only
@pytest.mark.slow
async def test_cancelled_during_commit(db: Database) -> None:
    await make_commits_slow(db)
    pids: list[int] = []

    async def work(conn: AsyncConnection) -> None:
        pids.append(await backend_pid(conn))
        await conn.execute(insert(keyed).values(id=1, label="commit"))
        await conn.execute(insert(log).values(label="commit"))

    task = asyncio.create_task(db.transaction(work))

    async def committing() -> bool:
        return bool(pids) and await sleeping(db, pids[0], "COMMIT%")

    await eventually(committing, "COMMIT to be in flight")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def session_ended() -> bool:
        return await exited(db, pids[0])

    # The session is cancelled while its COMMIT is still inside the deferred
    # trigger, so it ends without committing (the outcome is final once it has
    # ended); cancelled work is not retried.
    await eventually(session_ended, "the cancelled session to end")
    assert pids == [pids[0]]
    await assert_recovered(db, absent="commit")
    async with db.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(keyed))).scalar_one() == 0


# -- PostgreSQL: the connection is lost during COMMIT ---------------------------------


@postgresql_only
@pytest.mark.slow
@pytest.mark.parametrize("idempotent", [False, True])
async def test_backend_killed_during_commit(db: Database, idempotent: bool) -> None:
    await make_commits_slow(db)
    pids: list[int] = []

    async def work(conn: AsyncConnection) -> None:
        pids.append(await backend_pid(conn))
        # Idempotent by key, as the retry rule requires of callers.
        await conn.execute(pg_insert(keyed).values(id=1, label="x").on_conflict_do_nothing())

    async def kill_the_first_commit() -> None:
        async def committing() -> bool:
            return bool(pids) and await sleeping(db, pids[0], "COMMIT%")

        await eventually(committing, "COMMIT to be in flight")
        await terminate_backend(db, pids[0])

    killer = asyncio.create_task(kill_the_first_commit())
    if idempotent:
        await db.transaction(work, idempotent=True)
        assert len(pids) == 2
        assert db.retries["connection"] + db.retries["shutdown"] >= 1
        expected = [(1, "x")]
    else:
        with pytest.raises(CommitOutcomeUnknownError) as caught:
            await db.transaction(work, idempotent=False)
        assert len(pids) == 1  # the work ran once and was not retried
        assert "COMMIT" in str(caught.value)
        # Here the outcome is known to the test: the server died inside the
        # deferred trigger, before the commit record was written.
        expected = []
    await killer

    async with db.read() as conn:
        assert [tuple(row) for row in await conn.execute(select(keyed))] == expected
    assert db.pool_status().checked_out == 0
