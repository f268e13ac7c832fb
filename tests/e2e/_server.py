"""A real ``pipeline-db serve`` in a subprocess, for the end-to-end tests.

The server gets its own configuration file (the database under test, nothing
else) and an environment stripped of every ``PIPELINE_*`` variable of the
caller, so what the test sets is all it sees. Its output is collected line by
line and shown when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from pipeline_db import DatabaseConfig

#: The longest a server may take to answer /ready, or to exit after SIGTERM.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.1
#: A small pool per worker: 4 workers stay well under PostgreSQL's 100 connections.
POOL_SIZE = 5
MAX_OVERFLOW = 5
#: How a server ends after SIGTERM and a graceful shutdown. With several workers the
#: supervisor exits 0; a single worker is uvicorn's own process, which re-raises the
#: SIGTERM it caught once it has shut down (uvicorn ``Server.capture_signals``).
CLEAN_EXITS = (0, -signal.SIGTERM)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(config: DatabaseConfig, path: Path) -> Path:
    """Write a configuration file whose ``database:`` section is ``config``'s database."""
    if config.type == "sqlite":
        database: dict[str, object] = {"type": "sqlite", "path": str(config.path)}
    else:
        assert config.url is not None
        database = {
            "type": "postgresql",
            "url": config.url.get_secret_value(),
            "pool_size": POOL_SIZE,
            "max_overflow": MAX_OVERFLOW,
        }
    path.write_text(yaml.safe_dump({"database": database}), encoding="utf-8")
    return path


def environment(config_path: Path, token: str | None) -> dict[str, str]:
    """The caller's environment without ``PIPELINE_*``, pointed at ``config_path``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PIPELINE_") and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    env["PIPELINE_CONFIG"] = str(config_path)
    if token is not None:
        env["PIPELINE_API_TOKEN"] = token
    return env


async def run_cli(args: Sequence[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``pipeline-db ARGS`` to completion; returns its exit status and output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pipeline_db.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), START_TIMEOUT_S)
    assert proc.returncode is not None
    return proc.returncode, output.decode(errors="replace")


@dataclass
class Server:
    """A running ``pipeline-db serve`` and everything it printed so far."""

    proc: asyncio.subprocess.Process
    base_url: str
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        """Everything the server printed so far."""
        return "\n".join(self.lines)

    async def stop(self) -> int:
        """SIGTERM the server and wait for it to exit; returns its exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)


@contextlib.asynccontextmanager
async def serving(
    env: dict[str, str], *, workers: int, token: str | None, host: str = "127.0.0.1"
) -> AsyncIterator[Server]:
    """Start ``pipeline-db serve`` and wait until it is ready; kill it on the way out."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pipeline_db.cli",
        "serve",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    server = Server(proc, f"http://127.0.0.1:{port}")
    reader = asyncio.create_task(_collect(proc, server.lines))
    try:
        await _wait_ready(server, token)
        yield server
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await reader


async def _collect(proc: asyncio.subprocess.Process, lines: list[str]) -> None:
    assert proc.stdout is not None
    async for line in proc.stdout:
        lines.append(line.decode(errors="replace").rstrip())


async def _wait_ready(server: Server, token: str | None) -> None:
    """Wait for /health, then for /ready (a database round trip)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + START_TIMEOUT_S
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as http:
        for path in ("/health", "/ready"):
            while True:
                if server.proc.returncode is not None:
                    raise AssertionError(f"the server exited early:\n{server.output}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{path} did not answer 200:\n{server.output}")
                try:
                    if (await http.get(path)).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(POLL_S)
