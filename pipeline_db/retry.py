"""Retrying transactions: an attempt iterator with exponential backoff and full jitter.

An ``async with`` body cannot be re-run, so retries take the form of an
iterator of attempts (as tenacity's ``AsyncRetrying``)::

    async for attempt in db.retrying():
        async with attempt as conn:
            await conn.execute(...)

Each attempt is one transaction on a fresh connection. A transient failure
(see :class:`~pipeline_db.errors.TransientError`) ends the attempt, the
iterator sleeps and yields the next one; anything else propagates at once.
**The body may therefore run more than once: its writes must be idempotent.**
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from pipeline_db.errors import CommitOutcomeUnknownError, TransientError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from pipeline_db.config import RetryPolicy

logger = logging.getLogger("pipeline_db.retry")

T = TypeVar("T")
Unit = Callable[[], AbstractAsyncContextManager["AsyncConnection"]]


def backoff_delay(policy: RetryPolicy, failures: int) -> float:
    """Seconds to sleep after the ``failures``-th failure: full jitter, capped."""
    ceiling = min(policy.max_delay, policy.base_delay * 2 ** (failures - 1))
    return random.uniform(0, ceiling)


class Retrying:
    """An async iterator of :class:`Attempt`; see the module docstring.

    Raises (from iteration):
        TransientError: every attempt failed, or the deadline passed; carries
            the last failure's code and cause, chained as ``__cause__``.
        CommitOutcomeUnknownError: the connection was lost during COMMIT and
            the work was not declared idempotent.
    """

    def __init__(
        self,
        unit: Unit,
        policy: RetryPolicy,
        *,
        idempotent: bool = True,
        on_retry: Callable[[TransientError], None] | None = None,
    ) -> None:
        self._unit = unit
        self._policy = policy
        self._idempotent = idempotent
        self._on_retry = on_retry
        self._attempt = 0
        self._failure: TransientError | None = None
        self._done = False
        self._started = time.monotonic()

    def __aiter__(self) -> Retrying:
        return self

    async def __anext__(self) -> Attempt:
        if self._done:
            raise StopAsyncIteration
        failure = self._failure
        if failure is not None:
            self._failure = None
            await self._pause(failure)
        self._attempt += 1
        return Attempt(self, self._attempt)

    async def _pause(self, failure: TransientError) -> None:
        delay = backoff_delay(self._policy, self._attempt)
        elapsed = time.monotonic() - self._started
        if self._attempt >= self._policy.attempts or elapsed + delay > self._policy.deadline:
            limit = (
                f"{self._attempt} attempts"
                if self._attempt >= self._policy.attempts
                else f"the {self._policy.deadline:g}s deadline"
            )
            raise TransientError(
                f"gave up after {limit}: {failure.cause} ({failure.code or 'no code'}): "
                f"{failure.message}",
                code=failure.code,
                cause=failure.cause,
                attempts=self._attempt,
            ) from failure
        logger.warning(
            "transaction attempt %d failed: %s (%s); retrying in %.0f ms",
            self._attempt,
            failure.cause,
            failure.code or "no code",
            delay * 1000,
        )
        if self._on_retry is not None:
            self._on_retry(failure)
        await asyncio.sleep(delay)

    async def call(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Await ``attempt()`` until it succeeds, retrying transient failures.

        The form :meth:`~pipeline_db.Database.run_sync` uses: each call of
        ``attempt`` is one whole transaction.
        """
        while True:
            self._attempt += 1
            try:
                return await attempt()
            except TransientError as failure:
                self._refuse_unknown_commit(failure)
                await self._pause(failure)

    def _refuse_unknown_commit(self, failure: TransientError) -> None:
        if failure.context.get("during_commit") and not self._idempotent:
            raise CommitOutcomeUnknownError(
                f"the connection was lost during COMMIT ({failure.code or failure.cause}); "
                "the transaction may or may not have been applied",
                code=failure.code,
            ) from failure

    def _record(self, failure: TransientError | None) -> None:
        if failure is None:
            self._done = True
        else:
            self._failure = failure


class Attempt:
    """One attempt: an async context manager yielding a connection in a transaction."""

    def __init__(self, retrying: Retrying, number: int) -> None:
        self._retrying = retrying
        self._context: AbstractAsyncContextManager[AsyncConnection] | None = None
        #: 1 for the first attempt, 2 for the first retry, ...
        self.number = number

    async def __aenter__(self) -> AsyncConnection:
        # A failure to connect or BEGIN happens before the body could run, and
        # an ``async with`` cannot skip its body: retry it here, on the same budget.
        retrying = self._retrying
        while True:
            context = retrying._unit()
            try:
                connection = await context.__aenter__()
            except TransientError as failure:
                await retrying._pause(failure)
                retrying._attempt += 1
                self.number = retrying._attempt
                continue
            self._context = context
            return connection

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._context is not None
        try:
            await self._context.__aexit__(exc_type, exc, tb)
        except TransientError as failure:
            self._retrying._refuse_unknown_commit(failure)
            self._retrying._record(failure)
            return True
        self._retrying._record(None)
        return False
