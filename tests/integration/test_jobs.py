"""`JobQueue`: producers' operations and the runner-side primitives, on SQLite and PostgreSQL.

No runner runs here: claims, heartbeats, outcomes and reaping are driven
through the queue's own methods, so each state transition is checked alone.
Runners and processes are in ``test_runner.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from pipeline_db import (
    ConflictError,
    Database,
    DatabaseConfig,
    Episodes,
    InvalidInputError,
    NotFoundError,
)
from pipeline_db.jobs import JobQueue, Outcome
from pipeline_db.models import Job
from pipeline_db.schema import webhook_deliveries

WORKER = "test-worker"


@pytest.fixture
def queue(db: Database) -> JobQueue:
    return JobQueue(db)


async def register(db: Database, episode_id: str) -> str:
    """Register an episode (jobs refer to episodes by foreign key)."""
    await Episodes(db).register(
        id=episode_id, hash=f"hash-{episode_id}", source_path=f"/videos/{episode_id}.mp4"
    )
    return episode_id


async def deliveries(db: Database, job_id: int) -> list[dict[str, Any]]:
    """The webhook payloads queued for a job."""
    query = select(webhook_deliveries.c.payload).where(webhook_deliveries.c.job_id == job_id)
    async with db.read() as conn:
        return list((await conn.execute(query)).scalars())


async def claim_one(queue: JobQueue, **options: Any) -> Job:
    [job] = await queue.claim(WORKER, **options)
    return job


async def succeed(queue: JobQueue, job_id: int) -> Job:
    """Take a queued job through claim and finish as succeeded."""
    job = await claim_one(queue)
    assert job.id == job_id
    await queue.finish(WORKER, [Outcome(job, "succeeded", result={"ok": True})])
    return await queue.get(job_id)


async def fail_for_good(queue: JobQueue, job_id: int) -> Job:
    """Take a queued job through claim and finish as failed."""
    job = await claim_one(queue)
    assert job.id == job_id
    await queue.finish(WORKER, [Outcome(job, "failed", error="it broke", traceback="tb")])
    return await queue.get(job_id)


# -- enqueue -------------------------------------------------------------------


async def test_enqueue_queues_a_job_with_its_fields(db: Database, queue: JobQueue) -> None:
    episode = await register(db, "ep-1")
    later = datetime.now(UTC) + timedelta(hours=1)

    added = await queue.enqueue(
        "transcode",
        episode_id=episode,
        params={"height": 720, "tags": ["a", "b"]},
        priority=5,
        run_after=later,
        max_attempts=7,
        idempotency_key="k-1",
        webhook_url="https://example.test/hook",
    )

    assert added.created
    job = await queue.get(added.job.id)
    assert job == added.job
    assert (job.kind, job.episode_id, job.status) == ("transcode", "ep-1", "queued")
    assert job.params == {"height": 720, "tags": ["a", "b"]}
    assert (job.priority, job.attempts, job.max_attempts) == (5, 0, 7)
    assert job.idempotency_key == "k-1"
    assert job.webhook_url == "https://example.test/hook"
    assert abs((job.run_after - later).total_seconds()) < 0.001
    assert job.worker_id is None and job.lease_expires_at is None
    assert not job.finished


async def test_enqueue_defaults(queue: JobQueue) -> None:
    job = (await queue.enqueue("noop")).job

    assert job.params == {}
    assert (job.priority, job.attempts, job.max_attempts) == (0, 0, 3)
    assert job.episode_id is None and job.idempotency_key is None
    assert abs((job.run_after - job.created_at).total_seconds()) < 1


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"kind": " "}, "kind"),
        ({"params": ["not", "a", "mapping"]}, "params"),
        ({"params": {"when": object()}}, "params"),
        ({"priority": "high"}, "priority"),
        ({"priority": True}, "priority"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"run_after": datetime(2030, 1, 1)}, "run_after"),
        ({"webhook_url": "ftp://example.test"}, "webhook_url"),
    ],
)
async def test_enqueue_refuses_bad_fields_by_name(
    queue: JobQueue, options: dict[str, Any], field: str
) -> None:
    options = dict(options)  # parametrize shares the dict between backends
    kind = options.pop("kind", "noop")

    with pytest.raises(InvalidInputError) as caught:
        await queue.enqueue(kind, **options)

    assert caught.value.field == field
    assert (await queue.list()).items == []


async def test_enqueue_for_an_unknown_episode_is_not_found(queue: JobQueue) -> None:
    with pytest.raises(NotFoundError):
        await queue.enqueue("transcode", episode_id="no-such-episode")

    assert (await queue.list()).items == []


async def test_enqueue_with_a_free_key_for_an_unknown_episode_is_not_found(
    queue: JobQueue,
) -> None:
    # On PostgreSQL one statement checks both: no row back means the key was taken
    # or the episode is missing, and the queue must tell which.
    with pytest.raises(NotFoundError) as caught:
        await queue.enqueue("transcode", episode_id="no-such-episode", idempotency_key="free")

    assert caught.value.context["episode_id"] == "no-such-episode"
    assert (await queue.list()).items == []
    job = (await queue.enqueue("transcode", idempotency_key="free")).job
    assert job.idempotency_key == "free" and job.episode_id is None


async def test_idempotency_key_dedupes_20_concurrent_enqueues(
    make_config: Callable[..., DatabaseConfig],
) -> None:
    # Two Database instances (two pools) so the enqueues race on the server too.
    async with Database(make_config()) as one, Database(make_config()) as two:
        queues = [JobQueue(one), JobQueue(two)]
        start = asyncio.Barrier(20)

        async def submit(i: int) -> Any:
            await start.wait()
            return await queues[i % 2].enqueue("render", params={"n": i}, idempotency_key="same")

        results = await asyncio.gather(*(submit(i) for i in range(20)))

        assert sum(r.created for r in results) == 1
        assert len({r.job.id for r in results}) == 1
        [first] = [r for r in results if r.created]
        assert all(r.job.params == first.job.params for r in results)
        assert [j.id for j in (await queues[0].list()).items] == [first.job.id]


async def test_idempotency_key_returns_the_job_in_its_current_state(queue: JobQueue) -> None:
    first = await queue.enqueue("render", idempotency_key="k")
    done = await succeed(queue, first.job.id)

    again = await queue.enqueue("render", params={"other": True}, idempotency_key="k")

    assert not again.created
    assert again.job == done
    assert again.job.status == "succeeded"


async def test_enqueue_many_queues_every_job(queue: JobQueue) -> None:
    count = await queue.enqueue_many("thumb", [{"i": i} for i in range(25)])

    assert count == 25
    assert await queue.enqueue_many("thumb", []) == 0
    listed = (await queue.list(kind="thumb", limit=100)).items
    assert sorted(j.params["i"] for j in listed) == list(range(25))
    assert {j.status for j in listed} == {"queued"}


# -- get / list -------------------------------------------------------------------


async def test_get_an_unknown_job_is_not_found(queue: JobQueue) -> None:
    with pytest.raises(NotFoundError) as caught:
        await queue.get(12345)

    assert "12345" in caught.value.message


async def test_list_pages_newest_first_with_filters(db: Database, queue: JobQueue) -> None:
    episode = await register(db, "ep-list")
    ids = []
    for i in range(7):
        kind = "a" if i % 2 == 0 else "b"
        added = await queue.enqueue(kind, episode_id=episode if i < 3 else None, params={"i": i})
        ids.append(added.job.id)
    cancelled = ids[1]
    await queue.cancel(cancelled)

    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        page = await queue.list(limit=3, cursor=cursor)
        seen.extend(j.id for j in page.items)
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted(ids, reverse=True)
    assert pages == 3

    exact = await queue.list(limit=7)
    assert len(exact.items) == 7 and exact.next_cursor is None

    kind_a = await queue.list(kind="a", limit=2)
    assert [j.id for j in kind_a.items] == [ids[6], ids[4]]
    rest = await queue.list(kind="a", limit=2, cursor=kind_a.next_cursor)
    assert [j.id for j in rest.items] == [ids[2], ids[0]]
    assert rest.next_cursor is None

    assert [j.id for j in (await queue.list(episode_id=episode)).items] == ids[2::-1]
    assert [j.id for j in (await queue.list(statuses=["cancelled"])).items] == [cancelled]
    both = await queue.list(statuses=["cancelled", "queued"], kind="b")
    assert [j.id for j in both.items] == [ids[5], ids[3], ids[1]]
    assert (await queue.list(kind="none")).items == []


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"statuses": ["done"]}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
    ],
)
async def test_list_refuses_bad_arguments(
    queue: JobQueue, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        await queue.list(**options)

    assert caught.value.field == field


# -- cancel / retry ------------------------------------------------------------------


async def test_cancel_of_a_queued_job_is_immediate_and_never_claimed(queue: JobQueue) -> None:
    job = (await queue.enqueue("render")).job

    cancelled = await queue.cancel(job.id)

    assert cancelled.status == "cancelled"
    assert cancelled.finished_at is not None
    assert await queue.claim(WORKER, limit=10) == []
    assert (await queue.cancel(job.id)).status == "cancelled"  # again: no error


async def test_cancel_of_a_running_job_is_requested_at_its_heartbeat(queue: JobQueue) -> None:
    job = (await queue.enqueue("render")).job
    await claim_one(queue)

    requested = await queue.cancel(job.id)

    assert requested.status == "running"
    assert requested.cancel_requested
    cancel, lost = await queue.heartbeat(WORKER, [job.id])
    assert (cancel, lost) == ({job.id}, set())


async def test_cancel_of_finished_or_unknown_jobs(queue: JobQueue) -> None:
    done = (await queue.enqueue("render")).job
    await succeed(queue, done.id)
    failed = (await queue.enqueue("render")).job
    await fail_for_good(queue, failed.id)

    for job_id, status in ((done.id, "succeeded"), (failed.id, "failed")):
        with pytest.raises(ConflictError) as caught:
            await queue.cancel(job_id)
        assert status in caught.value.message
        assert (await queue.get(job_id)).status == status
    with pytest.raises(NotFoundError):
        await queue.cancel(999_999)


async def test_retry_of_a_failed_job_queues_it_with_attempts_reset(queue: JobQueue) -> None:
    job = (await queue.enqueue("render", max_attempts=1)).job
    failed = await fail_for_good(queue, job.id)
    assert (failed.status, failed.attempts) == ("failed", 1)

    retried = await queue.retry(job.id)

    assert (retried.status, retried.attempts) == ("queued", 0)
    assert retried.finished_at is None and retried.worker_id is None
    again = await claim_one(queue)
    assert (again.id, again.attempts) == (job.id, 1)


async def test_retry_of_a_cancelled_job(queue: JobQueue) -> None:
    job = (await queue.enqueue("render")).job
    await queue.cancel(job.id)

    assert (await queue.retry(job.id)).status == "queued"


async def test_retry_refuses_queued_running_succeeded_and_unknown(queue: JobQueue) -> None:
    queued = (await queue.enqueue("render", priority=-1)).job
    running = (await queue.enqueue("render", priority=2)).job
    await claim_one(queue)
    done = (await queue.enqueue("render", priority=1)).job
    await succeed(queue, done.id)

    for job_id in (queued.id, running.id, done.id):
        before = await queue.get(job_id)
        with pytest.raises(ConflictError):
            await queue.retry(job_id)
        assert await queue.get(job_id) == before
    with pytest.raises(NotFoundError):
        await queue.retry(999_999)


# -- stats / prune -------------------------------------------------------------------


async def test_stats_counts_by_status_and_kind_and_ages_the_oldest_queued(
    queue: JobQueue,
) -> None:
    empty = await queue.stats()
    assert empty.by_status == dict.fromkeys(
        ("queued", "running", "succeeded", "failed", "cancelled"), 0
    )
    assert empty.by_kind == {} and empty.oldest_queued_age_seconds is None

    first = (await queue.enqueue("a", priority=9)).job
    await asyncio.sleep(0.3)
    await queue.enqueue("a")
    await queue.enqueue("b")
    await succeed(queue, first.id)
    await claim_one(queue)  # the next "a" is running

    stats = await queue.stats()

    assert stats.by_status == {
        "queued": 1,
        "running": 1,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 0,
    }
    assert stats.by_kind == {"a": {"succeeded": 1, "running": 1}, "b": {"queued": 1}}
    # The oldest queued job is "b", created after the 0.3 s pause.
    assert stats.oldest_queued_age_seconds is not None
    assert 0 <= stats.oldest_queued_age_seconds < 5


async def test_prune_deletes_finished_jobs_older_than_the_cutoff(queue: JobQueue) -> None:
    done = (await queue.enqueue("x", priority=3)).job
    await succeed(queue, done.id)
    cancelled = (await queue.enqueue("x")).job
    await queue.cancel(cancelled.id)
    running = (await queue.enqueue("x", priority=2)).job
    await claim_one(queue)
    queued = (await queue.enqueue("x")).job

    assert await queue.prune(older_than_days=1) == 0
    await asyncio.sleep(0.05)
    assert await queue.prune(older_than_days=0) == 2

    left = {j.id: j.status for j in (await queue.list()).items}
    assert left == {running.id: "running", queued.id: "queued"}
    with pytest.raises(InvalidInputError):
        await queue.prune(older_than_days=-1)


# -- the runner side: claim, heartbeat, progress, finish, requeue, reap ---------------


async def test_claim_takes_priority_then_age_and_only_due_jobs(queue: JobQueue) -> None:
    low = (await queue.enqueue("k")).job
    high = (await queue.enqueue("k", priority=10)).job
    later = (await queue.enqueue("k", run_after=datetime.now(UTC) + timedelta(hours=1))).job
    newer_low = (await queue.enqueue("k")).job
    other_kind = (await queue.enqueue("other", priority=99)).job

    claimed = await queue.claim(WORKER, kinds=["k"], limit=10, lease_s=30)

    # RETURNING has no order: the order of a claim is tested with limits below.
    assert {j.id for j in claimed} == {high.id, low.id, newer_low.id}
    assert (await queue.get(later.id)).status == "queued"
    for job in claimed:
        assert (job.status, job.worker_id, job.attempts) == ("running", WORKER, 1)
        assert job.lease_expires_at is not None and job.started_at is not None
    assert (await queue.get(other_kind.id)).status == "queued"
    [only] = await queue.claim(WORKER, limit=1)
    assert only.id == other_kind.id


async def test_claim_order_with_a_limit(queue: JobQueue) -> None:
    low = (await queue.enqueue("k")).job
    high = (await queue.enqueue("k", priority=10)).job
    newer = (await queue.enqueue("k")).job

    assert [j.id for j in await queue.claim(WORKER, limit=1)] == [high.id]
    assert [j.id for j in await queue.claim(WORKER, limit=1)] == [low.id]
    assert [j.id for j in await queue.claim(WORKER, limit=1)] == [newer.id]
    assert await queue.claim(WORKER, limit=1) == []


async def test_claim_runs_one_job_per_episode_in_order(db: Database, queue: JobQueue) -> None:
    one = await register(db, "ep-a")
    two = await register(db, "ep-b")
    a1 = (await queue.enqueue("k", episode_id=one)).job
    a2 = (await queue.enqueue("k", episode_id=one)).job
    b1 = (await queue.enqueue("k", episode_id=two)).job
    free = (await queue.enqueue("k")).job

    first = {j.id for j in await queue.claim(WORKER, limit=10)}
    assert first == {a1.id, b1.id, free.id}
    assert await queue.claim(WORKER, limit=10) == []  # a2 waits for a1

    await queue.finish(WORKER, [Outcome(await queue.get(a1.id), "succeeded")])
    assert [j.id for j in await queue.claim(WORKER, limit=10)] == [a2.id]


async def test_heartbeat_extends_our_leases_and_reports_lost_jobs(queue: JobQueue) -> None:
    job = (await queue.enqueue("k")).job
    claimed = await claim_one(queue, lease_s=5)
    assert claimed.lease_expires_at is not None

    cancel, lost = await queue.heartbeat(WORKER, [job.id, 424242], lease_s=60)

    assert (cancel, lost) == (set(), {424242})
    extended = await queue.get(job.id)
    assert extended.lease_expires_at is not None
    assert (extended.lease_expires_at - claimed.lease_expires_at).total_seconds() > 50
    assert await queue.heartbeat("someone-else", [job.id]) == (set(), {job.id})
    assert await queue.heartbeat(WORKER, []) == (set(), set())


async def test_progress_is_recorded_for_the_holder_only(queue: JobQueue) -> None:
    job = (await queue.enqueue("k")).job
    await claim_one(queue)

    await queue.progress(WORKER, job.id, percent=42.5, stage="encode", message="halfway")
    await queue.progress("someone-else", job.id, percent=99)

    got = await queue.get(job.id)
    assert (got.progress_percent, got.progress_stage, got.progress_message) == (
        42.5,
        "encode",
        "halfway",
    )
    with pytest.raises(InvalidInputError):
        await queue.progress(WORKER, job.id, percent=101)


async def test_finish_records_outcomes_in_one_batch_and_only_once(queue: JobQueue) -> None:
    ids = [(await queue.enqueue("k", params={"i": i})).job.id for i in range(3)]
    hooked = (await queue.enqueue("k", webhook_url="https://example.test/h")).job
    jobs = {j.id: j for j in await queue.claim(WORKER, limit=10)}
    outcomes = [
        Outcome(jobs[ids[0]], "succeeded", result={"frames": 10}),
        Outcome(jobs[ids[1]], "failed", error="bad", traceback="Traceback..."),
        Outcome(jobs[ids[2]], "cancelled", error="cancelled on request"),
        Outcome(jobs[hooked.id], "succeeded", result=[1, 2]),
    ]

    await queue.finish(WORKER, outcomes)
    await queue.finish(WORKER, [Outcome(jobs[ids[0]], "failed", error="late")])  # no-op

    got = {i: await queue.get(i) for i in [*ids, hooked.id]}
    assert (got[ids[0]].status, got[ids[0]].result) == ("succeeded", {"frames": 10})
    assert (got[ids[1]].status, got[ids[1]].error) == ("failed", "bad")
    assert got[ids[1]].error_traceback == "Traceback..."
    assert got[ids[2]].status == "cancelled"
    assert got[hooked.id].result == [1, 2]
    for job in got.values():
        assert job.finished_at is not None and job.lease_expires_at is None


async def test_requeue_hands_a_job_back_with_or_without_its_attempt(queue: JobQueue) -> None:
    job = (await queue.enqueue("k")).job
    await claim_one(queue)

    await queue.requeue(WORKER, job.id, error="handed back", count_attempt=False)
    back = await queue.get(job.id)
    assert (back.status, back.attempts, back.worker_id) == ("queued", 0, None)
    assert back.error == "handed back"

    await claim_one(queue)
    await queue.requeue(WORKER, job.id, delay_s=3600, error="later", traceback="tb")
    later = await queue.get(job.id)
    assert (later.status, later.attempts, later.error_traceback) == ("queued", 1, "tb")
    assert (later.run_after - datetime.now(UTC)).total_seconds() > 3500
    assert await queue.claim(WORKER) == []


async def test_reap_requeues_expired_leases_and_fails_exhausted_jobs(queue: JobQueue) -> None:
    again = (await queue.enqueue("k", max_attempts=2)).job
    spent = (await queue.enqueue("k", max_attempts=1)).job
    fresh = (await queue.enqueue("k")).job
    claimed = await queue.claim(WORKER, limit=2, lease_s=1.0)
    assert {j.id for j in claimed} == {again.id, spent.id}
    await claim_one(queue, lease_s=60)  # `fresh`, still leased

    assert await queue.reap() == []
    expiry = max(j.lease_expires_at for j in claimed if j.lease_expires_at is not None)
    await asyncio.sleep((expiry - datetime.now(UTC)).total_seconds() + 0.1)
    reaped = {j.id: j.status for j in await queue.reap()}

    assert reaped == {again.id: "queued", spent.id: "failed"}
    requeued = await queue.get(again.id)
    assert (requeued.worker_id, requeued.attempts) == (None, 1)
    assert requeued.error is not None and "lease expired" in requeued.error
    failed = await queue.get(spent.id)
    assert failed.finished_at is not None
    assert (await queue.get(fresh.id)).status == "running"
    # The dead runner's late outcome does not overwrite the reaped job.
    await queue.finish(WORKER, [Outcome(requeued, "succeeded")])
    assert (await queue.get(again.id)).status == "queued"


async def test_requeue_cancels_a_job_whose_cancellation_was_requested(
    db: Database, queue: JobQueue
) -> None:
    # Otherwise the next claim clears the request and the job runs again
    # (a RetryLater, a retried error or a hand-back at shutdown after cancel()).
    job = (await queue.enqueue("k", webhook_url="https://example.test/h")).job
    await claim_one(queue)
    await queue.cancel(job.id)

    await queue.requeue(WORKER, job.id, error="handed back at shutdown", count_attempt=False)

    got = await queue.get(job.id)
    assert (got.status, got.error, got.worker_id) == ("cancelled", "cancelled on request", None)
    assert got.finished_at is not None
    assert await queue.claim(WORKER) == []
    [payload] = await deliveries(db, job.id)
    assert payload["status"] == "cancelled"


async def test_reap_cancels_an_expired_job_whose_cancellation_was_requested(
    db: Database, queue: JobQueue
) -> None:
    job = (await queue.enqueue("k", webhook_url="https://example.test/h")).job
    await claim_one(queue, lease_s=0.2)
    await queue.cancel(job.id)  # requested; its runner dies before the next heartbeat
    await asyncio.sleep(0.4)

    [reaped] = await queue.reap()

    assert (reaped.id, reaped.status, reaped.error) == (job.id, "cancelled", "cancelled on request")
    assert reaped.finished_at is not None
    assert await queue.claim(WORKER) == []
    [payload] = await deliveries(db, job.id)
    assert payload["status"] == "cancelled"


async def test_reap_of_an_exhausted_job_queues_its_failure_webhook(
    db: Database, queue: JobQueue
) -> None:
    job = (await queue.enqueue("k", max_attempts=1, webhook_url="https://example.test/h")).job
    await claim_one(queue, lease_s=0.2)
    await asyncio.sleep(0.4)

    [reaped] = await queue.reap()

    assert reaped.status == "failed"
    [payload] = await deliveries(db, job.id)
    assert (payload["status"], payload["job_id"]) == ("failed", job.id)
    async with db.read() as conn:
        total = (await conn.execute(select(func.count()).select_from(webhook_deliveries))).scalar()
    assert total == 1
