"""Webhook delivery from the outbox: POST each finished job's state to its ``webhook_url``.

:meth:`pipeline_db.jobs.JobQueue.finish` writes a ``webhook_deliveries`` row in
the same transaction as the job's outcome, so a delivery is never lost to a
crash and a restart finds every pending one. A :class:`Deliverer` (run beside
the runner by ``pipeline-db worker``, or on its own) sends them:

1. claim due deliveries in one short transaction, leasing each for
   ``claim_lease`` seconds (``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
   ``BEGIN IMMEDIATE`` on SQLite), so concurrent deliverers never send the
   same one at once; commit;
2. POST, outside any transaction, at most ``max_in_flight`` at once, each
   bounded by ``timeout`` seconds; a runner is never blocked;
3. record the answer: 2xx is ``delivered``; anything else (another status, a
   redirect, a network error, a timeout) counts an attempt and schedules the
   next after exponential backoff with jitter; a delivery whose next attempt
   would fall past its ``expires_at`` becomes ``expired``.

Delivery is at least once: a deliverer that dies between the receiver's 2xx
and recording it sends again after its lease. Receivers make it exactly once
by deduplicating on the ``X-Pipeline-Delivery`` id, which is the same on
every retry of one delivery.

**The request.** ``POST <webhook_url>`` with the job's state as a JSON body
(``job_id``, ``kind``, ``episode_id``, ``status``, ``result``, ``error``,
``attempts``, ``finished_at``) and these headers:

* ``Content-Type: application/json``
* ``X-Pipeline-Delivery``: the delivery id (stable across retries);
* ``X-Pipeline-Attempt``: 1 for the first attempt, 2 for the next, ...;
* ``X-Pipeline-Timestamp``: when this attempt was sent, in Unix seconds;
* ``X-Pipeline-Signature: sha256=<hex>`` when a secret is configured.

**The signature.** ``<hex>`` is the lower-case hex HMAC-SHA256, keyed with the
secret's UTF-8 bytes, of ``f"{delivery}.{timestamp}.".encode() + body``: the
delivery id and timestamp exactly as in their headers, then the exact body
bytes. A receiver recomputes it over the raw body before parsing it, compares
with :func:`hmac.compare_digest`, and rejects a timestamp more than a few
minutes from its clock (a captured request cannot be replayed later). The
delivery id is signed too, so a replay cannot dodge deduplication by changing
it. :func:`verify` does all of this. The scheme is Standard Webhooks'
(https://www.standardwebhooks.com/) with GitHub's ``sha256=<hex>`` spelling.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy.engine import Connection

from pipeline_db import _json
from pipeline_db.database import Database
from pipeline_db.errors import InterfaceError, PipelineDBError
from pipeline_db.queries import webhooks as q

logger = logging.getLogger("pipeline_db.webhooks")

MAX_IN_FLIGHT = 8
POLL_INTERVAL_S = 1.0
TIMEOUT_S = 10.0
CLAIM_LEASE_S = 60.0
BACKOFF_BASE_S = 5.0
BACKOFF_MAX_S = 600.0
SHUTDOWN_GRACE_S = 15.0
SIGNATURE_TOLERANCE_S = 300.0
ERROR_CHARS = 500
USER_AGENT = "pipeline-db-webhooks"

DELIVERY_HEADER = "X-Pipeline-Delivery"
ATTEMPT_HEADER = "X-Pipeline-Attempt"
TIMESTAMP_HEADER = "X-Pipeline-Timestamp"
SIGNATURE_HEADER = "X-Pipeline-Signature"


def sign(secret: str | bytes, delivery: str | int, timestamp: str | int, body: bytes) -> str:
    """The ``X-Pipeline-Signature`` value (``sha256=<hex>``) of one request.

    Args:
        secret: the shared secret (a str is encoded as UTF-8).
        delivery: the ``X-Pipeline-Delivery`` header.
        timestamp: the ``X-Pipeline-Timestamp`` header (Unix seconds).
        body: the exact body bytes.
    """
    key = secret.encode() if isinstance(secret, str) else secret
    signed = f"{delivery}.{timestamp}.".encode() + body
    return "sha256=" + hmac.new(key, signed, hashlib.sha256).hexdigest()


def verify(
    secret: str | bytes,
    *,
    delivery: str,
    timestamp: str,
    body: bytes,
    signature: str,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether a received request is genuine and fresh (for receivers; see the module docstring).

    Args:
        secret: the shared secret.
        delivery, timestamp, signature: the request's headers of those names.
        body: the raw body, before any parsing.
        tolerance_s: the largest accepted distance between ``timestamp`` and ``now``.
        now: the receiver's clock in Unix seconds (default: ``time.time()``).
    """
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, delivery, timestamp, body), signature)


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """A row of the webhook outbox."""

    id: int
    job_id: int
    url: str
    payload: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    expires_at: datetime
    created_at: datetime
    delivered_at: datetime | None


async def deliveries(db: Database, job_id: int) -> list[WebhookDelivery]:
    """The webhook deliveries of a job, oldest first."""

    def work(conn: Connection) -> list[WebhookDelivery]:
        return [WebhookDelivery(**row) for row in conn.execute(q.by_job(job_id)).mappings()]

    return await db.run_sync(work, readonly=True)


def _report_crash(task: asyncio.Task[None]) -> None:
    # Raised again on exit; logged now so a dead deliverer does not go unnoticed until then.
    if not task.cancelled() and task.exception() is not None:
        logger.error("webhooks: the deliverer stopped", exc_info=task.exception())


@dataclass(frozen=True, slots=True)
class _Claim:
    id: int
    url: str
    payload: Any
    attempts: int
    #: The lease deadline this claim set: its compare-and-set token.
    token: datetime


class Deliverer:
    """Sends the webhook outbox's pending deliveries until :meth:`stop`.

    Use ``await deliverer.run()`` in a task, or ``async with Deliverer(db):``
    to run it in the background for the block's duration.

    Args:
        db: the database holding the outbox.
        secret: signs every request when set (see the module docstring).
        max_in_flight: POSTs in flight at once.
        poll_interval: seconds between looks at the outbox when idle.
        timeout: seconds one POST may take in all (connect, send, answer).
        claim_lease: seconds a claimed delivery stays ours; must exceed ``timeout``.
        backoff_base: seconds before the second attempt; doubles per attempt.
        backoff_max: the longest wait between attempts, in seconds.
        shutdown_grace: seconds in-flight POSTs get to finish on stop.

    Raises:
        InterfaceError: an option is out of range.
    """

    def __init__(
        self,
        db: Database,
        *,
        secret: str | SecretStr | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        poll_interval: float = POLL_INTERVAL_S,
        timeout: float = TIMEOUT_S,
        claim_lease: float = CLAIM_LEASE_S,
        backoff_base: float = BACKOFF_BASE_S,
        backoff_max: float = BACKOFF_MAX_S,
        shutdown_grace: float = SHUTDOWN_GRACE_S,
    ) -> None:
        if max_in_flight < 1:
            raise InterfaceError("max_in_flight must be >= 1")
        for name, value in (
            ("poll_interval", poll_interval),
            ("timeout", timeout),
            ("backoff_base", backoff_base),
            ("backoff_max", backoff_max),
        ):
            if not value > 0:
                raise InterfaceError(f"{name} must be > 0 seconds")
        if shutdown_grace < 0:
            raise InterfaceError("shutdown_grace must be >= 0 seconds")
        # The lease must outlive the POST and the recording of its answer, or a
        # second deliverer could claim the row while the first still sends it.
        if not claim_lease > timeout:
            raise InterfaceError("claim_lease must be longer than timeout")
        self._db = db
        plain = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        self._secret = plain.encode() if plain else None
        self._max_in_flight = max_in_flight
        self._poll_interval = poll_interval
        self._timeout = timeout
        self._claim_lease = claim_lease
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._shutdown_grace = shutdown_grace
        self._in_flight: dict[asyncio.Task[None], _Claim] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Deliveries delivered, attempts failed, deliveries expired (for tests and metrics).
        self.counts: dict[str, int] = {"delivered": 0, "failed": 0, "expired": 0}

    def stop(self) -> None:
        """Stop claiming; :meth:`run` returns once in-flight POSTs are done or handed back."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Deliver until :meth:`stop`; no delivery stays claimed by this deliverer on return."""
        limits = httpx.Limits(max_connections=self._max_in_flight)
        headers = {"User-Agent": USER_AGENT}
        async with httpx.AsyncClient(
            timeout=self._timeout, limits=limits, headers=headers, follow_redirects=False
        ) as client:
            try:
                await self._claim_loop(client)
            finally:
                await self._drain()

    async def __aenter__(self) -> Deliverer:
        self._task = asyncio.create_task(self.run(), name="webhook-deliverer")
        self._task.add_done_callback(_report_crash)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._task is not None:
            task, self._task = self._task, None
            await task

    async def _claim_loop(self, client: httpx.AsyncClient) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            free = self._max_in_flight - len(self._in_flight)
            claimed = await self._claim(free) if free > 0 else []
            for claim in claimed:
                task = asyncio.create_task(self._deliver(client, claim), name=f"webhook-{claim.id}")
                self._in_flight[task] = claim
                task.add_done_callback(self._done)
            if free > 0 and len(claimed) == free:
                continue  # more may be due: claim again as soon as a slot frees
            with contextlib.suppress(TimeoutError):
                # Full: wait for a slot (or stop). Otherwise poll.
                await asyncio.wait_for(self._wake.wait(), self._poll_interval if free else None)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._wake.set()

    async def _claim(self, limit: int) -> list[_Claim]:
        expire, claim = q.expire(self._db.dialect), q.claim(self._db.dialect)
        params = {"p_limit": limit, "p_lease": self._claim_lease}

        def work(conn: Connection) -> tuple[int, list[_Claim]]:
            expired = len(conn.execute(expire).all())
            claims = [
                _Claim(row.id, row.url, row.payload, row.attempts, row.next_attempt_at)
                for row in conn.execute(claim, params)
            ]
            return expired, claims

        try:
            expired, claims = await self._db.run_sync(work)
        except PipelineDBError as error:
            logger.warning("webhooks: claiming deliveries failed: %s", error.message)
            return []
        if expired:
            self.counts["expired"] += expired
            logger.warning("webhooks: %d deliveries expired undelivered", expired)
        return sorted(claims, key=lambda claim: claim.id)

    async def _deliver(self, client: httpx.AsyncClient, claim: _Claim) -> None:
        error = await self._post(client, claim)
        params: dict[str, Any]
        if error is None:
            self.counts["delivered"] += 1
            record, params = q.delivered(), {"p_id": claim.id}
        else:
            self.counts["failed"] += 1
            delay = self._backoff(claim.attempts + 1)
            logger.info("webhooks: delivery %d failed (%s); retry in %.1fs", claim.id, error, delay)
            params = {"p_id": claim.id, "p_claim": claim.token, "p_delay": delay, "p_error": error}
            record = q.failed()
        try:
            await self._db.run_sync(lambda conn: conn.execute(record, params))
        except PipelineDBError as error:
            # Unrecorded, the claim's lease runs out and the delivery is tried again.
            logger.error("webhooks: recording delivery %d failed: %s", claim.id, error.message)

    async def _post(self, client: httpx.AsyncClient, claim: _Claim) -> str | None:
        """POST one delivery; returns None on 2xx, else why it failed."""
        body = _json.dumps(claim.payload).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: str(claim.id),
            ATTEMPT_HEADER: str(claim.attempts + 1),
            TIMESTAMP_HEADER: timestamp,
        }
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, claim.id, timestamp, body)
        try:
            async with asyncio.timeout(self._timeout):
                # Streamed and never read: the receiver's body is of no use to us.
                async with client.stream("POST", claim.url, content=body, headers=headers) as sent:
                    status, reason = sent.status_code, sent.reason_phrase
        except TimeoutError:
            return f"timed out after {self._timeout:g}s"
        except Exception as error:  # any failure of the request is a failed attempt
            return self._redact(f"{type(error).__name__}: {error}".rstrip(": "))
        if 200 <= status < 300:
            return None
        return self._redact(f"HTTP {status} {reason}".strip())

    def _redact(self, message: str) -> str:
        # The secret is never sent, but a receiver's URL or an exception could
        # quote anything: it must not reach the database.
        if self._secret is not None:
            message = message.replace(self._secret.decode(), "[secret]")
        return message[:ERROR_CHARS]

    def _backoff(self, attempt: int) -> float:
        """Seconds before the attempt after ``attempt``: exponential, capped, equal jitter."""
        ceiling = min(self._backoff_max, self._backoff_base * 2.0 ** max(0, attempt - 1))
        # Half fixed, half random: spread out, yet never hammering a failing receiver.
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def _drain(self) -> None:
        """Let in-flight POSTs finish within the grace, then hand the rest back unattempted."""
        if not self._in_flight:
            return
        claims = dict(self._in_flight)
        _, pending = await asyncio.wait(set(claims), timeout=self._shutdown_grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        unfinished = [claims[task] for task in pending]
        if not unfinished:
            return
        rows = [{"p_id": claim.id, "p_claim": claim.token} for claim in unfinished]
        with contextlib.suppress(PipelineDBError):
            await self._db.run_sync(lambda conn: conn.execute(q.release(), rows))
        logger.info("webhooks: handed back %d unfinished deliveries", len(unfinished))
