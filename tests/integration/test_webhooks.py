"""Webhook delivery from the outbox, on SQLite and PostgreSQL, to a real HTTP server.

The receiver is a real HTTP/1.1 server on 127.0.0.1 (``asyncio.start_server``)
that answers a scripted sequence of statuses and records every request, so
retries, signatures, restarts and concurrent deliverers are checked on the
wire. Backoffs are a fraction of a second so each test takes well under 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from types import TracebackType
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite

from pipeline_db import Database, DatabaseConfig
from pipeline_db.config import WorkerConfig
from pipeline_db.handlers import Handlers, JobContext
from pipeline_db.jobs import JobQueue, Outcome
from pipeline_db.queries import webhooks as q
from pipeline_db.runner import Runner, RunnerOptions
from pipeline_db.schema import webhook_deliveries
from pipeline_db.webhooks import Deliverer, WebhookDelivery, deliveries, sign, verify
from pipeline_db.worker import run_worker

SECRET = "s3cret-for-tests"
WORKER = "test-worker"
#: Upper bound on any wait; reached only when a test fails.
WAIT_S = 8.0
#: Fast settings: retries after 0.05-0.2 s.
FAST: dict[str, Any] = {
    "poll_interval": 0.05,
    "timeout": 2.0,
    "claim_lease": 5.0,
    "backoff_base": 0.1,
    "backoff_max": 0.2,
}


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it, and the status it answered."""

    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def delivery(self) -> str:
        return self.headers["x-pipeline-delivery"]


class Receiver:
    """A minimal HTTP/1.1 server: answers ``statuses`` in turn (then 200), records requests."""

    def __init__(self, statuses: Iterable[int] = (), *, delay_s: float = 0.0) -> None:
        self._script = list(statuses)
        self._delay_s = delay_s
        self._handlers: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.requests: list[Received] = []
        #: Requests whose head arrived (answered or not yet).
        self.arrived = 0
        self.url = ""

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    def acknowledged(self) -> list[Received]:
        """The requests answered 2xx."""
        return [r for r in self.requests if 200 <= r.status < 300]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            assert request_line.startswith("POST /hook HTTP/1.1"), request_line
            headers = {}
            for line in filter(None, lines):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.arrived += 1
            if self._delay_s:
                await asyncio.sleep(self._delay_s)
            status = self._script.pop(0) if self._script else 200
            self.requests.append(Received(headers, body, status))
            reason = HTTPStatus(status).phrase
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away (a timeout, a stopped deliverer)
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``condition`` until it holds (fails the test after ``WAIT_S``)."""
    deadline = time.monotonic() + WAIT_S
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def finished_jobs(db: Database, url: str, count: int = 1) -> list[int]:
    """Enqueue, claim and finish ``count`` jobs with a webhook; returns their ids."""
    queue = JobQueue(db)
    for n in range(count):
        await queue.enqueue("render", params={"n": n}, webhook_url=url)
    jobs = await queue.claim(WORKER, limit=count)
    assert len(jobs) == count
    await queue.finish(WORKER, [Outcome(job, "succeeded", result={"n": job.id}) for job in jobs])
    return sorted(job.id for job in jobs)


async def only_delivery(db: Database, job_id: int) -> WebhookDelivery:
    [delivery] = await deliveries(db, job_id)
    return delivery


async def is_status(db: Database, job_id: int, status: str) -> bool:
    """Whether the job's delivery exists and is in ``status``."""
    return [d.status for d in await deliveries(db, job_id)] == [status]


def expected_signature(request: Received, secret: str = SECRET) -> str:
    """The signature computed here from the documented scheme, not with the library's code."""
    material = f"{request.delivery}.{request.headers['x-pipeline-timestamp']}.".encode()
    digest = hmac.new(secret.encode(), material + request.body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


async def noop(ctx: JobContext) -> dict[str, Any]:
    """A handler that succeeds at once (also loaded by dotted path in the worker test)."""
    return {"done": ctx.job.id}


# -- delivery ------------------------------------------------------------------


async def test_delivered_once_after_two_failures_signed(db: Database) -> None:
    async with Receiver([500, 500]) as receiver:
        queue = JobQueue(db)
        job_id = (await queue.enqueue("noop", webhook_url=receiver.url)).job.id
        runner = Runner(db, Handlers({"noop": noop}), RunnerOptions(poll_interval=0.05))
        running = asyncio.create_task(runner.run())
        try:
            async with Deliverer(db, secret=SECRET, **FAST) as deliverer:
                await until(lambda: is_status(db, job_id, "delivered"), "the delivery")
        finally:
            runner.stop()
            await running

    assert [r.status for r in receiver.requests] == [500, 500, 200]
    assert len(receiver.acknowledged()) == 1
    delivery = await only_delivery(db, job_id)
    assert {r.delivery for r in receiver.requests} == {str(delivery.id)}
    assert [r.headers["x-pipeline-attempt"] for r in receiver.requests] == ["1", "2", "3"]
    for request in receiver.requests:
        assert request.headers["content-type"] == "application/json"
        signature = request.headers["x-pipeline-signature"]
        assert signature == expected_signature(request)
        assert abs(int(request.headers["x-pipeline-timestamp"]) - time.time()) < 60
        assert verify(
            SECRET,
            delivery=request.delivery,
            timestamp=request.headers["x-pipeline-timestamp"],
            body=request.body,
            signature=signature,
        )
        assert signature != expected_signature(request, "another secret")
        payload = json.loads(request.body)
        assert payload["job_id"] == job_id
        assert payload["status"] == "succeeded"
        assert payload["result"] == {"done": job_id}
    assert delivery.status == "delivered"
    assert delivery.attempts == 3
    assert delivery.delivered_at is not None
    assert delivery.last_error is None
    assert deliverer.counts == {"delivered": 1, "failed": 2, "expired": 0}


async def test_restart_between_attempts_loses_nothing_and_sends_once(
    db: Database, make_config: Callable[..., DatabaseConfig]
) -> None:
    async with Receiver([500, 500]) as receiver:
        [job_id] = await finished_jobs(db, receiver.url)
        # The second attempt waits 0.5-1 s: time to stop before it.
        slow_retry = {**FAST, "backoff_base": 1.0, "backoff_max": 1.0}
        async with Deliverer(db, secret=SECRET, **slow_retry):
            await until(
                lambda: _attempts_recorded(db, job_id, 1), "the first failure to be recorded"
            )
        await db.dispose()  # the process "exits" with the delivery pending
        assert len(receiver.requests) == 1

        async with Database(make_config()) as restarted:
            first = await only_delivery(restarted, job_id)
            assert first.status == "pending"
            assert first.last_error == "HTTP 500 Internal Server Error"
            async with Deliverer(restarted, secret=SECRET, **FAST) as deliverer:
                await until(lambda: is_status(restarted, job_id, "delivered"), "the delivery")
            delivery = await only_delivery(restarted, job_id)

    assert [r.status for r in receiver.requests] == [500, 500, 200]
    assert len(receiver.acknowledged()) == 1
    assert {r.delivery for r in receiver.requests} == {str(delivery.id)}
    assert all(
        r.headers["x-pipeline-signature"] == expected_signature(r) for r in receiver.requests
    )
    assert delivery.attempts == 3
    assert deliverer.counts["delivered"] == 1


async def _attempts_recorded(db: Database, job_id: int, attempts: int) -> bool:
    return (await only_delivery(db, job_id)).attempts >= attempts


async def test_stop_mid_post_hands_the_claim_back(
    db: Database, make_config: Callable[..., DatabaseConfig]
) -> None:
    async with Receiver(delay_s=1.0) as receiver:
        [job_id] = await finished_jobs(db, receiver.url)
        stopping = Deliverer(db, shutdown_grace=0.05, **FAST)
        async with stopping:
            await until(lambda: _arrived(receiver), "the POST to arrive")
        handed_back = await only_delivery(db, job_id)
        # Released unattempted and due at once, not after its 5 s claim lease.
        assert handed_back.status == "pending"
        assert handed_back.attempts == 0
        assert handed_back.next_attempt_at <= datetime.now(UTC)

        async with Database(make_config()) as restarted, Deliverer(restarted, **FAST):
            await until(lambda: is_status(restarted, job_id, "delivered"), "the delivery")
    assert stopping.counts == {"delivered": 0, "failed": 0, "expired": 0}


async def _arrived(receiver: Receiver) -> bool:
    return receiver.arrived > 0


# -- expiry ----------------------------------------------------------------------


async def test_past_expiry_expires_without_a_post(db: Database) -> None:
    async with Receiver() as receiver:
        [job_id] = await finished_jobs(db, receiver.url)
        past = datetime.now(UTC) - timedelta(seconds=1)
        await db.run_sync(
            lambda conn: conn.execute(update(webhook_deliveries).values(expires_at=past))
        )
        async with Deliverer(db, **FAST) as deliverer:
            await until(lambda: is_status(db, job_id, "expired"), "the expiry")

    assert receiver.requests == []
    delivery = await only_delivery(db, job_id)
    assert delivery.attempts == 0
    assert delivery.last_error == "expired before any delivery was attempted"
    assert deliverer.counts == {"delivered": 0, "failed": 0, "expired": 1}


async def test_a_retry_that_would_fall_past_expiry_expires_now(db: Database) -> None:
    async with Receiver([503]) as receiver:
        [job_id] = await finished_jobs(db, receiver.url)
        soon = datetime.now(UTC) + timedelta(seconds=2)
        await db.run_sync(
            lambda conn: conn.execute(update(webhook_deliveries).values(expires_at=soon))
        )
        options = {**FAST, "backoff_base": 10.0, "backoff_max": 10.0}
        async with Deliverer(db, secret=SECRET, **options):
            await until(lambda: is_status(db, job_id, "expired"), "the expiry")

    assert len(receiver.requests) == 1
    delivery = await only_delivery(db, job_id)
    assert delivery.attempts == 1
    assert delivery.last_error == "HTTP 503 Service Unavailable"
    assert SECRET not in (delivery.last_error or "")


# -- concurrency -----------------------------------------------------------------


async def test_two_deliverers_deliver_each_row_once(
    db: Database, make_config: Callable[..., DatabaseConfig]
) -> None:
    async with Receiver(delay_s=0.02) as receiver:
        job_ids = await finished_jobs(db, receiver.url, count=30)
        options = {**FAST, "max_in_flight": 4}
        async with (
            Database(make_config()) as other,
            Deliverer(db, **options) as first,
            Deliverer(other, **options) as second,
        ):

            async def all_delivered() -> bool:
                found = [await only_delivery(db, job_id) for job_id in job_ids]
                return all(d.status == "delivered" for d in found)

            await until(all_delivered, "every delivery")

    ids = [r.delivery for r in receiver.requests]
    assert len(ids) == 30
    assert len(set(ids)) == 30  # no delivery was sent twice
    assert first.counts["delivered"] + second.counts["delivered"] == 30
    assert first.counts["delivered"] > 0
    assert second.counts["delivered"] > 0
    # No secret: no signature, but the rest of the headers.
    assert all("x-pipeline-signature" not in r.headers for r in receiver.requests)
    assert all(r.headers["x-pipeline-attempt"] == "1" for r in receiver.requests)


def test_claim_and_expire_lock_rows_on_postgresql_only() -> None:
    """SQLAlchemy drops FOR UPDATE on SQLite silently; BEGIN IMMEDIATE covers it there."""
    for statement in (q.claim, q.expire):
        on_postgresql = str(statement("postgresql").compile(dialect=postgresql.dialect()))
        on_sqlite = str(statement("sqlite").compile(dialect=sqlite.dialect()))
        assert "FOR UPDATE SKIP LOCKED" in on_postgresql
        assert "FOR UPDATE" not in on_sqlite
        assert "RETURNING" in on_sqlite


# -- the worker and the scheme ---------------------------------------------------


async def test_the_worker_runs_a_deliverer_beside_its_runner(db: Database) -> None:
    config = WorkerConfig.model_validate(
        {"poll_interval": 0.05, "handlers": {"noop": f"{__name__}:noop"}, "webhook_secret": SECRET}
    )
    async with Receiver() as receiver:
        job_id = (await JobQueue(db).enqueue("noop", webhook_url=receiver.url)).job.id
        worker = asyncio.create_task(run_worker(db, config, kinds=["noop"]))
        await until(lambda: is_status(db, job_id, "delivered"), "the delivery")
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the worker's loop
        await asyncio.wait_for(worker, WAIT_S)

    [request] = receiver.requests
    assert request.headers["x-pipeline-signature"] == expected_signature(request)


def test_verify_refuses_stale_tampered_and_forged_requests() -> None:
    body = b'{"job_id":1}'
    now = 1_700_000_000
    good = sign(SECRET, 7, now, body)
    assert verify(SECRET, delivery="7", timestamp=str(now), body=body, signature=good, now=now)
    stale = now - 301
    checks = [
        {"timestamp": str(stale), "signature": sign(SECRET, 7, stale, body)},  # replayed later
        {"delivery": "8"},  # another delivery id, to dodge deduplication
        {"body": b'{"job_id":2}'},
        {"signature": sign("wrong", 7, now, body)},
        {"timestamp": "soon"},
    ]
    for change in checks:
        request: dict[str, Any] = {
            "delivery": "7",
            "timestamp": str(now),
            "body": body,
            "signature": good,
        }
        request.update(change)
        assert not verify(SECRET, now=now, **request), change
