"""Helpers of the operations tests: an empty database, the CLI in a subprocess, other processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline_db import DatabaseConfig
from tests.conftest import admin_execute, postgres_config, sqlite_config

HERE = Path(__file__).parent
CLI_TIMEOUT_S = 60.0

# Direct parametrisation overrides conftest's `backend` fixture for one test.
postgresql_only = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgresql)]
)
sqlite_only = pytest.mark.parametrize("backend", [pytest.param("sqlite", marks=pytest.mark.sqlite)])


@contextlib.asynccontextmanager
async def empty_database(backend: str, tmp_path: Path) -> AsyncIterator[DatabaseConfig]:
    """A database with nothing in it, to restore into; dropped afterwards (PostgreSQL)."""
    if backend == "sqlite":
        yield sqlite_config(tmp_path / f"empty-{uuid.uuid4().hex[:6]}.db")
        return
    name = f"pdbtest_empty_{uuid.uuid4().hex[:12]}"
    await admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_config(name)
    finally:
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def url_of(config: DatabaseConfig) -> str:
    """The configuration's URL, password included (for a subprocess)."""
    return config.sqlalchemy_url().render_as_string(hide_password=False)


def write_config(
    config: DatabaseConfig, path: Path, *, server: dict[str, Any] | None = None, **database: Any
) -> Path:
    """A configuration file for ``config``'s database (with overrides) and a server section."""
    section: dict[str, Any] = {"type": config.type, "url": url_of(config), **database}
    path.write_text(yaml.safe_dump({"database": section, "server": server or {}}), "utf-8")
    return path


async def run_cli(args: Sequence[str], config_path: Path) -> tuple[int, str]:
    """Run ``pipeline-db --config PATH ARGS``; returns its exit status and output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pipeline_db.cli",
        "--config",
        str(config_path),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
    assert proc.returncode is not None
    return proc.returncode, output.decode(errors="replace")


async def start_helper(script: str, *args: str) -> tuple[asyncio.subprocess.Process, list[str]]:
    """Start ``python _ops_helpers/SCRIPT ARGS`` until its "ready ..." line; returns its words."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / script),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(HERE.parents[2])},
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), CLI_TIMEOUT_S)
    if not line.startswith(b"ready"):
        await kill(proc)
        raise AssertionError(f"{script} did not start: {line!r}")
    return proc, line.decode().split()[1:]


async def kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL a helper and reap it."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
    await proc.wait()


def files_in(folder: Path) -> set[str]:
    """The paths of the files in ``folder``."""
    return {str(path) for path in folder.iterdir()}


def flip_byte(file: Path) -> None:
    """Corrupt ``file``: invert the byte in its middle."""
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


def _postgres_bin() -> Path | None:
    for found in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (found / "initdb").exists():
            return found
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@contextlib.contextmanager
def private_postgres(*settings: str) -> Iterator[str]:
    """A throwaway PostgreSQL cluster started with ``-c`` ``settings``; yields its URL.

    For what the shared test server cannot be made to do (preloaded libraries
    need a restart). Skips the test when the server binaries are missing.
    """
    binaries = _postgres_bin()
    if binaries is None:
        pytest.skip("no PostgreSQL server binaries (initdb) on this host")
    folder = Path(tempfile.mkdtemp(prefix="pdbtest-cluster-"))
    # PostgreSQL refuses to run as root: run it as the postgres user then.
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if run_as:
        shutil.chown(folder, "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = " ".join(
        [f"-p {port}", f"-k {folder}", "-c listen_addresses=127.0.0.1", "-c fsync=off"]
        + [f"-c {setting}" for setting in settings]
    )
    data = folder / "data"
    pg_ctl = [*run_as, str(binaries / "pg_ctl"), "-D", str(data)]
    try:
        initdb = [str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
        subprocess.run([*run_as, *initdb], check=True, capture_output=True)
        start = ["-o", options, "-l", str(folder / "log"), "-w", "start"]
        subprocess.run([*pg_ctl, *start], check=True, capture_output=True)
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
