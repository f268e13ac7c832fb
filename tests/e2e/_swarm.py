"""What the 50 clients of the end-to-end test do, and the record of what they were told.

Every client registers its own episode, one sharing a hash with nine others
and one sharing an id with all the others; advances its episode stage by
stage; submits jobs with a key (then again with the same key, then with the
same key and another body), a processing job with a key (twice) and a job
without a key; and patches its metadata. Between these, every client takes
part in each race round at the same moment (an asyncio barrier lines them up):
all move one race episode from the same expected stage, and all submit the
round's shared job with the same ``Idempotency-Key``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from pipeline_db.schema import STAGES
from tests.e2e._server import Server

CLIENTS = 50
DUPLICATE_GROUPS = 5
RACE_EPISODES = 3
RACE_ROUNDS = 6
JOB_KIND = "e2e.noop"
#: n8n resends a request answered 409 "request in progress" after a fixed wait.
RESENDS = 50
RESEND_WAIT_S = 0.05
SWARM_TIMEOUT_S = 45.0
REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Call:
    """One request a client sent and what it was told (status 0: no answer at all)."""

    client: int
    op: str
    group: str
    method: str
    path: str
    sent: dict[str, Any] | None
    status: int
    body: Any
    text: str
    replayed: bool


class Client:
    """One of the 50 clients: sends requests and records every answer."""

    def __init__(self, http: httpx.AsyncClient, index: int, calls: list[Call]) -> None:
        self.http = http
        self.index = index
        self.calls = calls

    async def send(
        self,
        op: str,
        group: str,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        key: str | None = None,
    ) -> Call:
        headers = {"Idempotency-Key": key} if key else {}
        try:
            response = await self.http.request(method, path, json=body, headers=headers)
        except httpx.TransportError as error:
            call = Call(self.index, op, group, method, path, body, 0, None, repr(error), False)
        else:
            parsed = response.json() if "json" in response.headers.get("content-type", "") else None
            replayed = response.headers.get("idempotent-replayed") == "true"
            call = Call(
                self.index,
                op,
                group,
                method,
                path,
                body,
                response.status_code,
                parsed,
                response.text,
                replayed,
            )
        self.calls.append(call)
        return call

    async def send_until_answered(
        self, op: str, group: str, path: str, body: dict[str, Any], key: str
    ) -> Call:
        """POST, resending while the first request with the key is in progress (as n8n does)."""
        for _ in range(RESENDS):
            call = await self.send(op, group, "POST", path, body, key=key)
            if not in_progress(call):
                return call
            await asyncio.sleep(RESEND_WAIT_S)
        return call

    async def register(self, op: str, episode_id: str, content_hash: str) -> Call:
        body = {"id": episode_id, "hash": content_hash, "source_path": f"/in/{episode_id}.mp4"}
        return await self.send(op, content_hash, "POST", "/episodes", body)

    async def advance(self, op: str, episode_id: str, expected: str, stage: str) -> Call:
        body = {"stage": stage, "expected_stage": expected}
        return await self.send(op, episode_id, "PATCH", f"/episodes/{episode_id}", body)


def in_progress(call: Call) -> bool:
    return (
        call.status == 409
        and isinstance(call.body, dict)
        and call.body.get("type") == "/problems/request-in-progress"
    )


def race_step(round_: int) -> tuple[str, str, str]:
    """The race episode of a round, and the stage every client moves it from and to."""
    step = round_ // RACE_EPISODES
    return f"race-{round_ % RACE_EPISODES}", STAGES[step], STAGES[step + 1]


def _solo_ops(me: Client) -> list[Callable[[], Awaitable[Call]]]:
    """The client's own requests, no race intended: 10 of them, in order."""
    c = me.index
    own = f"own-{c}"
    job = {"kind": JOB_KIND, "params": {"client": c}}
    process = {"target_stage": "rendered"}
    process_key = f"{own}-process-rendered"
    return [
        lambda: me.advance("advance", own, STAGES[0], STAGES[1]),
        lambda: me.send("job", f"job-{c}", "POST", "/jobs", job, key=f"job-{c}"),
        lambda: me.send("job-again", f"job-{c}", "POST", "/jobs", job, key=f"job-{c}"),
        lambda: me.advance("advance", own, STAGES[1], STAGES[2]),
        lambda: me.send(
            "process", process_key, "POST", f"/episodes/{own}/process", process, key=process_key
        ),
        lambda: me.send(
            "process-again",
            process_key,
            "POST",
            f"/episodes/{own}/process",
            process,
            key=process_key,
        ),
        lambda: me.advance("advance", own, STAGES[2], STAGES[3]),
        lambda: me.send("job-no-key", own, "POST", "/jobs", job | {"priority": 1}),
        lambda: me.send("metadata", own, "PATCH", f"/episodes/{own}", {"metadata": {"client": c}}),
        lambda: me.send(
            "key-reused", f"job-{c}", "POST", "/jobs", job | {"priority": 2}, key=f"job-{c}"
        ),
    ]


async def _client(me: Client, barrier: asyncio.Barrier) -> None:
    c = me.index
    await me.register("own", f"own-{c}", f"hash-own-{c}")
    await barrier.wait()
    await me.register("duplicate", f"dup-{c}", f"hash-dup-{c % DUPLICATE_GROUPS}")
    await barrier.wait()
    await me.register("same-id", "common", f"hash-common-{c}")
    await me.register("own-again", f"own-{c}", f"hash-own-{c}")
    solo = _solo_ops(me)
    for round_ in range(RACE_ROUNDS):
        await barrier.wait()
        episode, expected, stage = race_step(round_)
        await me.advance(f"race-{round_}", episode, expected, stage)
        job = {"kind": JOB_KIND, "params": {"round": round_}}
        await me.send_until_answered(
            "shared-job", f"shared-{round_}", "/jobs", job, f"shared-{round_}"
        )
        await solo[round_]()
    for op in solo[RACE_ROUNDS:]:
        await op()


async def swarm(server: Server, token: str) -> list[Call]:
    """Run the 50 clients against ``server``; returns every request and its answer."""
    calls: list[Call] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=server.base_url, headers=headers, timeout=REQUEST_TIMEOUT_S
    ) as http:
        setup = Client(http, -1, calls)
        for n in range(RACE_EPISODES):
            await setup.register("race-setup", f"race-{n}", f"hash-race-{n}")
    barrier = asyncio.Barrier(CLIENTS)
    async with asyncio.timeout(SWARM_TIMEOUT_S), asyncio.TaskGroup() as group:
        for c in range(CLIENTS):
            # Half the clients close the connection after every request, as n8n does.
            client_headers = headers | ({"Connection": "close"} if c % 2 else {})
            http = httpx.AsyncClient(
                base_url=server.base_url, headers=client_headers, timeout=REQUEST_TIMEOUT_S
            )
            group.create_task(_run_client(http, Client(http, c, calls), barrier))
    return calls


async def _run_client(http: httpx.AsyncClient, me: Client, barrier: asyncio.Barrier) -> None:
    async with http:
        await _client(me, barrier)
