"""bench/http.py's plumbing: wrk (or httpx) load, servers on 127.0.0.1, /metrics deltas."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench._common import Result
from pipeline_db.schema import STAGES

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 50
#: wrk's threads: wrk, the server, PostgreSQL and this process share 2 cores.
WRK_THREADS = 2
WRK_TIMEOUT_S = 10
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
PATHS = {
    "read": ("GET", "/episodes/{episode_id}"),
    "register": ("POST", "/episodes"),
    "advance": ("PATCH", "/episodes/{episode_id}"),
    "constant": ("GET", "/"),
}

# One script for every case: ``wrk ... -- CASE EPISODES TAG``. Each thread has its
# own Lua state, numbered in setup(); done() prints the figures as JSON.
WRK_SCRIPT = """
local stages = {STAGES}
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  case, count, tag = args[1], tonumber(args[2]), args[3]
  n = 0
  math.randomseed(tid * 7919 + 17)
  json = {["Content-Type"] = "application/json"}
end
function request()
  n = n + 1
  if case == "read" then
    return wrk.format("GET", string.format("/episodes/ep%06d", math.random(0, count - 1)))
  elseif case == "advance" then
    local body = string.format('{"stage":"%s","force":true}', stages[n % #stages + 1])
    local path = string.format("/episodes/ep%06d", math.random(0, count - 1))
    return wrk.format("PATCH", path, json, body)
  elseif case == "register" then
    local key = string.format("%s-%d-%d", tag, tid, n)
    local body = string.format(
      '{"id":"http-%s","hash":"%s","source_path":"/media/http/%s.mp4"}', key, key, key)
    return wrk.format("POST", "/episodes", json, body)
  end
  return wrk.format("GET", "/")
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
""".replace("{STAGES}", "{" + ", ".join(f'"{s}"' for s in STAGES) + "}")


@dataclass
class Measured:
    """One case's figures: rate, latency percentiles and errors by kind."""

    rate: float
    p50_ms: float
    p99_ms: float
    errors: Counter[str] = field(default_factory=Counter)
    #: Answers by status, and the mean wait for a pool slot, from /metrics.
    statuses: Counter[str] = field(default_factory=Counter)
    wait_ms: float | None = None

    @property
    def error_count(self) -> int:
        """Every error: socket errors, timeouts and non-2xx answers."""
        return sum(self.errors.values())

    @classmethod
    def of(cls, result: Result) -> Measured:
        """The figures of an in-process timed run (raw asyncpg)."""
        return cls(result.rate, result.percentile(0.5), result.percentile(0.99), result.errors)


# -- load generators ---------------------------------------------------------------


class Load:
    """Runs one case against a base URL for some seconds: wrk, or httpx without it."""

    def __init__(self, folder: Path, episodes: int) -> None:
        self.wrk = shutil.which("wrk")
        self.script = folder / "cases.lua"
        self.script.write_text(WRK_SCRIPT, encoding="utf-8")
        self.episodes = episodes
        self.runs = 0

    @property
    def label(self) -> str:
        """What generates the load, for the report."""
        if self.wrk:
            return f"wrk, {WRK_THREADS} threads, {CONNECTIONS} connections"
        return (
            f"httpx in-process, {CONNECTIONS} connections (wrk not found: "
            "`apt-get install wrk` for the real figures; these are lower)"
        )

    async def run(self, base_url: str, case: str, seconds: float) -> Measured:
        """Load ``case`` for ``seconds``."""
        self.runs += 1
        tag = f"{os.getpid()}-{self.runs}-{random.getrandbits(24):x}"
        if self.wrk:
            return await self._wrk(base_url, case, seconds, tag)
        return await _httpx_load(base_url, case, seconds, self.episodes, tag)

    async def _wrk(self, base_url: str, case: str, seconds: float, tag: str) -> Measured:
        assert self.wrk is not None
        proc = await asyncio.create_subprocess_exec(
            self.wrk,
            f"-t{WRK_THREADS}",
            f"-c{CONNECTIONS}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={WRK_TIMEOUT_S}s",
            "-s",
            str(self.script),
            base_url,
            "--",
            case,
            str(self.episodes),
            tag,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await proc.communicate()
        text = output.decode(errors="replace")
        found = re.search(r"^WRK (\{.*\})$", text, re.MULTILINE)
        if proc.returncode != 0 or found is None:
            raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text}")
        figures = json.loads(found.group(1))
        errors = Counter(
            {
                kind: figures[kind]
                for kind in ("connect", "read", "write", "timeout", "status")
                if figures[kind]
            }
        )
        return Measured(
            rate=figures["requests"] / (figures["duration_us"] / 1e6),
            p50_ms=figures["p50_us"] / 1000,
            p99_ms=figures["p99_us"] / 1000,
            errors=errors,
        )


def _request(case: str, n: int, rng: random.Random, episodes: int, tag: str) -> httpx.Request:
    """The same requests as the wrk script's."""
    if case == "read":
        return httpx.Request("GET", f"/episodes/ep{rng.randrange(episodes):06d}")
    if case == "advance":
        body = {"stage": STAGES[n % len(STAGES)], "force": True}
        return httpx.Request("PATCH", f"/episodes/ep{rng.randrange(episodes):06d}", json=body)
    if case == "register":
        key = f"{tag}-{n}"
        body = {"id": f"http-{key}", "hash": key, "source_path": f"/media/http/{key}.mp4"}
        return httpx.Request("POST", "/episodes", json=body)
    return httpx.Request("GET", "/")


async def _httpx_load(
    base_url: str, case: str, seconds: float, episodes: int, tag: str
) -> Measured:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=WRK_TIMEOUT_S) as client:
        deadline = time.perf_counter() + seconds

        async def connection(index: int) -> None:
            rng, n = random.Random(index * 7919 + 17), 0
            while time.perf_counter() < deadline:
                n += 1
                request = _request(case, n, rng, episodes, f"{tag}-{index}")
                request.url = client.base_url.join(request.url)
                started = time.perf_counter()
                try:
                    response = await client.send(request)
                except httpx.TimeoutException:
                    errors["timeout"] += 1
                    continue
                except httpx.TransportError:
                    errors["read"] += 1
                    continue
                latencies.append(time.perf_counter() - started)
                if not 200 <= response.status_code < 400:
                    errors["status"] += 1

        began = time.perf_counter()
        await asyncio.gather(*(connection(i) for i in range(CONNECTIONS)))
        elapsed = time.perf_counter() - began
    result = Result(case, CONNECTIONS, elapsed, latencies)
    return Measured(
        len(latencies) / elapsed, result.percentile(0.5), result.percentile(0.99), errors
    )


# -- servers -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def environment(config_path: Path | None) -> dict[str, str]:
    """This environment without PIPELINE_* (and metrics folders), pointed at the config."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PIPELINE_") and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    if config_path is not None:
        env["PIPELINE_CONFIG"] = str(config_path)
    return env


@dataclass
class Server:
    """A server process on 127.0.0.1 and its log file."""

    proc: asyncio.subprocess.Process
    base_url: str
    log: Path

    def tail(self, lines: int = 30) -> str:
        """The end of what it printed."""
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@contextlib.asynccontextmanager
async def serving(args: list[str], env: dict[str, str], log: Path) -> AsyncIterator[Server]:
    """Start a server (``args`` take ``{port}``), wait for it to answer; SIGTERM it after."""
    port = _free_port()
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *(arg.format(port=port) for arg in args),
            env=env,
            cwd=str(ROOT),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        await _wait_ready(server)
        yield server
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        while True:
            if server.proc.returncode is not None:
                raise RuntimeError(f"the server exited early:\n{server.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{server.tail()}")
            with contextlib.suppress(httpx.TransportError):
                # The constant app answers every path 404 but "/", the API /ready.
                response = await client.get("/ready")
                if response.status_code in (200, 404):
                    return
            await asyncio.sleep(0.1)


# -- /metrics ----------------------------------------------------------------------

# Label values hold braces ("/episodes/{episode_id}"): the labels run to the last "}".
_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")


async def scrape(base_url: str) -> dict[tuple[str, str], float]:
    """Requests by (route method, status), and the pool-wait sum, from /metrics."""
    async with httpx.AsyncClient(base_url=base_url) as client:
        text = (await client.get("/metrics")).text
    found: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, value = match["name"], float(match["value"])
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        if name == "pipeline_http_requests_total":
            key = (f"{labels['method']} {labels['route']}", labels["status"])
            found[key] = found.get(key, 0.0) + value
        elif name == "pipeline_db_pool_wait_seconds_sum":
            found[("pool wait", "sum")] = found.get(("pool wait", "sum"), 0.0) + value
    return found


def difference(
    case: str, before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> tuple[Counter[str], float | None]:
    """The case's answers by status between two scrapes, and the mean pool wait in ms."""
    method, path = PATHS[case]
    route = f"{method} {path}"
    statuses: Counter[str] = Counter()
    for key, value in after.items():
        if key[0] == route:
            statuses[key[1]] += round(value - before.get(key, 0.0))
    total = sum(statuses.values())
    waited = after.get(("pool wait", "sum"), 0.0) - before.get(("pool wait", "sum"), 0.0)
    return +statuses, (waited / total * 1000 if total else None)
