"""Everything through a real PgBouncer in transaction pooling mode (issue 7).

conftest's session fixture ``pgbouncer`` starts Debian's PgBouncer on a free
port with ``pool_mode = transaction``, a pool of a few server connections per
database (so clients swap server connections between transactions) and no
``ignore_startup_parameters``. Here every `Database` goes through it with
``pgbouncer: true``:

* the foundation's fault tests (``test_faults.py``), collected again in this
  module so that their ``db`` and ``make_config`` are the ones below; their
  operator's connections (``pg_terminate_backend``, ``pg_stat_activity``) go
  straight to PostgreSQL, as an operator's psql would. One is rewritten: a
  COMMIT cancelled through PgBouncer ends the transaction, not the server
  session, which PgBouncer keeps for its next client;
* the per-transaction settings, autocommit and ``run_sync`` under contention;
* the job queue: two ``pipeline-db worker`` processes run 1000 jobs exactly
  once, LISTEN over ``listen_url`` wakes a runner, and without it the runner
  polls and says so once;
* schema migrations from an empty database, and ``pipeline-db migrate
  --pgbouncer``: COPY from SQLite, and its lock against a second migration.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from pipeline_db import Database, DatabaseConfig, DatabaseError, Episodes
from pipeline_db.jobs import JobQueue
from pipeline_db.migrations import status, upgrade
from pipeline_db.transfer.errors import MigrationError
from pipeline_db.transfer.pg_target import PostgreSQLTarget
from tests.conftest import ADMIN_URL, admin_execute, sqlite_config

from . import test_faults
from ._bounced_jobs import (
    STEP_TIMEOUT_S,
    events,
    eventually,
    running,
    settled,
    worker_config,
    workers,
)
from ._pgbouncer import PgBouncer
from .test_faults import (
    admin_fetchval,
    assert_recovered,
    backend_pid,
    bump,
    counter,
    counters,
    keyed,
    labels,
    make_commits_slow,
    sleeping,
)
from .test_faults import log as fault_log

# The foundation's fault tests on PostgreSQL, collected again here.
test_backend_killed_mid_transaction_is_retried_and_applied_once = (
    test_faults.test_backend_killed_mid_transaction_is_retried_and_applied_once
)
test_write_skew_under_serializable_is_retried_to_a_serial_outcome = (
    test_faults.test_write_skew_under_serializable_is_retried_to_a_serial_outcome
)
test_deadlock_is_retried_and_both_transactions_commit = (
    test_faults.test_deadlock_is_retried_and_both_transactions_commit
)
test_cancelled_mid_transaction_leaves_no_trace = (
    test_faults.test_cancelled_mid_transaction_leaves_no_trace
)
test_cancelled_while_waiting_for_a_connection = (
    test_faults.test_cancelled_while_waiting_for_a_connection
)
test_backend_killed_during_commit = test_faults.test_backend_killed_during_commit

# The fault tests' own `db`: their tables, on conftest's `db` (here through PgBouncer).
db = test_faults.db


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgresql)])
def backend(request: pytest.FixtureRequest) -> str:
    """PostgreSQL only: conftest's `backend`, without SQLite."""
    return str(request.param)


@pytest.fixture
def make_config(  # overrides conftest's: the same database, through PgBouncer
    make_config: Callable[..., DatabaseConfig], pgbouncer: PgBouncer
) -> Callable[..., DatabaseConfig]:
    """A configuration factory for the database under test, through PgBouncer."""
    database = make_config().sqlalchemy_url().database
    assert database is not None
    url = pgbouncer.url(make_url(ADMIN_URL), database)

    def bounced(**overrides: Any) -> DatabaseConfig:
        return make_config(**{"url": url, "pgbouncer": True, **overrides})

    return bounced


def direct_url(config: DatabaseConfig) -> str:
    """``config``'s database, straight to PostgreSQL (conftest's server, not PgBouncer)."""
    database = config.sqlalchemy_url().database
    url = make_url(ADMIN_URL).set(drivername="postgresql", database=database)
    return url.render_as_string(hide_password=False)


@pytest.fixture(autouse=True)
def operator_goes_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fault tests' own sessions (kill, pg_stat_activity) bypass PgBouncer."""
    monkeypatch.setattr(test_faults, "admin_dsn", direct_url)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """The job handlers' execution log."""
    return tmp_path / "executions.log"


def url_of(config: DatabaseConfig) -> str:
    assert config.url is not None
    return config.url.get_secret_value()


async def setting(conn: AsyncConnection, name: str) -> str:
    return str((await conn.execute(select(func.current_setting(name)))).scalar_one())


# -- a fault test that differs behind PgBouncer ----------------------------------------


@pytest.mark.slow
async def test_cancelled_during_commit(db: Database) -> None:
    await make_commits_slow(db)
    pids: list[int] = []

    async def work(conn: AsyncConnection) -> None:
        pids.append(await backend_pid(conn))
        await conn.execute(insert(keyed).values(id=1, label="commit"))
        await conn.execute(insert(fault_log).values(label="commit"))

    task = asyncio.create_task(db.transaction(work))

    async def committing() -> bool:
        return bool(pids) and await sleeping(db, pids[0], "COMMIT%")

    await test_faults.eventually(committing, "COMMIT to be in flight")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def commit_over() -> bool:
        state = await admin_fetchval(
            db, "SELECT state FROM pg_stat_activity WHERE pid = $1", pids[0]
        )
        return state in (None, "idle")

    # asyncpg sends a cancel request for the COMMIT (PgBouncer forwards it to
    # the server connection) and closes its connection to PgBouncer. The server
    # session rolls back and stays, idle, in PgBouncer's pool.
    await test_faults.eventually(commit_over, "the cancelled COMMIT to end")
    assert pids == [pids[0]]  # cancelled work is not retried
    await assert_recovered(db, absent="commit")
    async with db.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(keyed))).scalar_one() == 0


# -- session settings ------------------------------------------------------------------


async def test_timeouts_apply_to_each_transaction_and_stay_in_it(
    make_config: Callable[..., DatabaseConfig],
) -> None:
    # PgBouncer refuses them as startup parameters (and so would this one: it has
    # no ignore_startup_parameters); they are set per transaction instead.
    strict = make_config(statement_timeout=1500, idle_in_transaction_session_timeout=7000)
    plain = make_config(statement_timeout=0, idle_in_transaction_session_timeout=0)

    async def both(conn: AsyncConnection) -> tuple[str, str]:
        idle = await setting(conn, "idle_in_transaction_session_timeout")
        return await setting(conn, "statement_timeout"), idle

    def statement_timeout(conn: Connection) -> str:
        return str(conn.execute(select(func.current_setting("statement_timeout"))).scalar_one())

    async with Database(strict) as db, Database(plain) as other:
        assert await db.transaction(both) == ("1500ms", "7s")
        async with db.read() as conn:
            assert await setting(conn, "statement_timeout") == "1500ms"
        # Autocommit work runs in a transaction when a statement_timeout must apply.
        assert await db.transaction(both, autocommit=True) == ("1500ms", "7s")
        assert await db.run_sync(statement_timeout) == "1500ms"
        assert await db.run_sync(statement_timeout, autocommit=True) == "1500ms"
        with pytest.raises(DatabaseError) as timed_out:
            await db.transaction(lambda conn: conn.execute(text("SELECT pg_sleep(5)")))
        assert timed_out.value.code == "57014"  # query_canceled: the timeout applied

        # The server connections PgBouncer hands the other Database kept nothing.
        for _ in range(20):
            assert await other.transaction(both) == ("0", "0")
            assert await other.transaction(both, autocommit=True) == ("0", "0")


async def test_application_name_reaches_the_server(
    make_config: Callable[..., DatabaseConfig],
) -> None:
    async with Database(make_config(application_name="pdb-bounced")) as db:
        async with db.read() as conn:
            assert await setting(conn, "application_name") == "pdb-bounced"


# -- statements under contention ----------------------------------------------------------


async def test_autocommit_and_run_sync_under_contention(db: Database) -> None:
    # 20 client connections on PgBouncer's few server connections: every
    # statement may land on another server connection than the one before.
    # Named prepared statements fail here ("prepared statement ... does not exist").
    assert db.config.pgbouncer
    tasks, rounds = 20, 15

    def read_sync(conn: Connection) -> int:
        return int(conn.execute(select(func.count()).select_from(fault_log)).scalar_one())

    def write_sync(conn: Connection, label: str) -> None:
        conn.execute(fault_log.insert().values(label=label))
        conn.execute(
            counters.update().where(counters.c.name == "total").values(value=counters.c.value + 1)
        )

    async def read_async(conn: AsyncConnection) -> int:
        query = select(func.count()).select_from(fault_log).where(fault_log.c.label > "")
        return int((await conn.execute(query)).scalar_one())

    async def bump_and_log(conn: AsyncConnection, label: str) -> None:
        await conn.execute(fault_log.insert().values(label=label))
        await bump(conn, "total")

    async def client(task: int) -> None:
        for n in range(rounds):
            await db.run_sync(read_sync, autocommit=True, readonly=True)
            await db.transaction(read_async, autocommit=True)
            await db.run_sync(lambda conn, n=n: write_sync(conn, f"t{task}-{n}"))
            await db.transaction(lambda conn, n=n: bump_and_log(conn, f"a{task}-{n}"))

    results = await asyncio.gather(*(client(t) for t in range(tasks)), return_exceptions=True)

    assert [r for r in results if r is not None] == []
    assert await counter(db, "total") == 2 * tasks * rounds
    assert len(await labels(db)) == 2 * tasks * rounds
    assert not db.retries  # nothing failed, so nothing was retried


# -- the job queue ----------------------------------------------------------------------


@pytest.mark.slow
async def test_two_worker_processes_run_1000_jobs_exactly_once(
    db: Database, make_config: Callable[..., DatabaseConfig], log: Path, tmp_path: Path
) -> None:
    queue = JobQueue(db)
    config = worker_config(
        make_config(listen_url=direct_url(db.config)),
        tmp_path / "pipeline.yaml",
        concurrency=8,
        prefetch=8,
        poll_interval=0.5,
        shutdown_grace=2,
    )
    async with workers(config, 2, tmp_path) as started:
        assert await queue.enqueue_many("record", [{"log": str(log)}] * 1000) == 1000

        async def all_done() -> bool:
            return (await queue.stats()).by_status["succeeded"] == 1000

        await eventually(all_done, "1000 jobs to succeed")
        for worker in started:
            assert await worker.stop() == 0, worker.text()
            assert "polling" not in worker.text()  # they listened over listen_url

    stats = await queue.stats()
    assert stats.by_status == {
        "queued": 0,
        "running": 0,
        "succeeded": 1000,
        "failed": 0,
        "cancelled": 0,
    }
    runs = Counter(e["job"] for e in events(log))
    assert len(runs) == 1000
    assert [job_id for job_id, n in runs.items() if n > 1] == []
    assert set(Counter(e["pid"] for e in events(log))) == {w.process.pid for w in started}


async def test_notify_over_listen_url_wakes_a_runner(
    make_config: Callable[..., DatabaseConfig], log: Path
) -> None:
    listening = make_config()
    listening = make_config(listen_url=direct_url(listening))
    async with Database(listening) as db, Database(make_config()) as producer:
        queue, other = JobQueue(db), JobQueue(producer)  # other's in-process signal wakes no one
        async with running(db, poll_interval=30):
            first = (await other.enqueue("record", params={"log": str(log)})).job
            await settled(queue, first.id)  # picked up at start; the runner now waits 30 s
            enqueued = time.time()
            second = (await other.enqueue("record", params={"log": str(log)})).job
            await settled(queue, second.id)

    [ran] = [e for e in events(log) if e["job"] == second.id]
    assert ran["t"] - enqueued < 5  # woken by the NOTIFY, not by the 30 s poll


async def test_without_listen_url_the_runner_polls_and_says_so_once(
    make_config: Callable[..., DatabaseConfig], log: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pipeline_db")
    async with Database(make_config()) as db, Database(make_config()) as producer:
        assert await db.backend.listen(db.config, "anything", lambda: None) is None
        queue, other = JobQueue(db), JobQueue(producer)
        async with running(db, poll_interval=0.2):
            for _ in range(3):  # the runner goes round its loop many times
                job = (await other.enqueue("record", params={"log": str(log)})).job
                assert (await settled(queue, job.id)).status == "succeeded"
                await asyncio.sleep(0.5)

    warnings = [r.getMessage() for r in caplog.records if "listen_url" in r.getMessage()]
    assert warnings == [
        "pgbouncer is on and no listen_url is set: LISTEN/NOTIFY is off, "
        "job runners poll the queue instead"
    ]


# -- migrations and COPY ------------------------------------------------------------------


@pytest.fixture
async def empty(
    make_config: Callable[..., DatabaseConfig],
) -> AsyncIterator[Callable[..., DatabaseConfig]]:
    """An empty database (no schema), through PgBouncer; returns its config factory."""
    bounced = make_config()
    name = f"{bounced.sqlalchemy_url().database}_empty"
    await admin_execute(f'CREATE DATABASE "{name}"')
    url = bounced.sqlalchemy_url().set(drivername="postgresql", database=name)
    try:
        yield lambda **overrides: make_config(
            url=url.render_as_string(hide_password=False), **overrides
        )
    finally:
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_schema_migrations_run_through_pgbouncer(
    empty: Callable[..., DatabaseConfig],
) -> None:
    async with Database(empty()) as db:
        assert not (await status(db)).is_current
        # Two at once: the migration lock is transaction-scoped, so it holds
        # through PgBouncer (a session lock would stay on a server connection).
        await asyncio.gather(upgrade(db), upgrade(db))
        found = await status(db)
        assert found.is_current and found.current == found.head


@pytest.mark.slow
async def test_migration_from_sqlite_copies_through_pgbouncer(
    empty: Callable[..., DatabaseConfig], tmp_path: Path
) -> None:
    source = tmp_path / "pipeline.db"
    async with Database(sqlite_config(source)) as lite:
        await upgrade(lite)
        episodes = Episodes(lite)
        for n in range(200):
            await episodes.register(id=f"ep{n:03}", hash=f"h{n}", source_path=f"/v/{n}.mp4")
    target = empty()

    migrate = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("pipeline-db")),
        "migrate",
        str(source),
        url_of(target),
        "--pgbouncer",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    output, _ = await asyncio.wait_for(migrate.communicate(), 60)

    assert migrate.returncode == 0, output.decode(errors="replace")
    direct = await asyncpg.connect(direct_url(target))
    try:
        assert await direct.fetchval("SELECT count(*) FROM episodes") == 200
        assert await direct.fetchval("SELECT count(*) FROM processing_log") == 200
    finally:
        await direct.close()


async def test_a_second_migration_into_the_same_target_is_refused(
    empty: Callable[..., DatabaseConfig],
) -> None:
    # The lock lives in a transaction held open on a connection of its own: a
    # session lock would stay on a server connection PgBouncer lends to others.
    first, second = PostgreSQLTarget(empty()), PostgreSQLTarget(empty())
    await first.prepare()
    try:
        with pytest.raises(MigrationError, match="another migration is writing"):
            await second.reconnect()
    finally:
        await first.close()
        await second.close()
    await second.reconnect()  # free again once the first has closed
    await second.close()

    direct = await asyncpg.connect(direct_url(empty()))
    try:

        async def unlocked() -> bool:
            query = (
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database ="
                " (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            return await direct.fetchval(query) == 0

        await eventually(unlocked, "the migration lock to be released")
    finally:
        await direct.close()


async def test_copy_records_through_pgbouncer(db: Database) -> None:
    # What a migration's COPY needs: a raw asyncpg connection with the statement
    # cache off, copying inside a transaction and outside one.
    url = db.config.sqlalchemy_url().set(drivername="postgresql")
    conn = await asyncpg.connect(url.render_as_string(hide_password=False), statement_cache_size=0)
    try:
        rows = [(n, f"row{n}") for n in range(5_000)]
        async with conn.transaction():
            await conn.copy_records_to_table("fault_keyed", records=rows[:2_500])
        await conn.copy_records_to_table("fault_keyed", records=rows[2_500:])
        assert await conn.fetchval("SELECT count(*) FROM fault_keyed") == 5_000
    finally:
        await conn.close(timeout=STEP_TIMEOUT_S)
