"""A real PgBouncer in transaction pooling mode, in front of the test PostgreSQL server.

Debian's ``pgbouncer`` package (``.ci/run`` installs it) is started on a free
port of 127.0.0.1 with a configuration written here: ``pool_mode =
transaction``, ``auth_type = trust`` (users and passwords from ``auth_file``,
which PgBouncer also uses to log in to PostgreSQL), every database forwarded
to the server under the same name, and no ``ignore_startup_parameters``: a
stock PgBouncer refuses unknown startup parameters, and so must the tests.

PgBouncer refuses to run as root unless ``-u`` names the user to switch to:
as root it runs as ``postgres`` (else ``nobody``), which then owns its folder.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url

#: Server connections per (database, user): small, so that clients share and
#: swap server connections between transactions, as in production.
POOL_SIZE = 8
#: Longest wait for PgBouncer to listen or to exit.
START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class PgBouncer:
    """A running PgBouncer: where it listens and where its log goes."""

    host: str
    port: int
    log: Path

    def url(self, upstream: URL, database: str) -> str:
        """``upstream``'s user and password, through this PgBouncer, to ``database``."""
        url = upstream.set(
            drivername="postgresql", host=self.host, port=self.port, database=database
        )
        return url.render_as_string(hide_password=False)


def executable() -> str | None:
    """The ``pgbouncer`` binary on the PATH (Debian puts it in /usr/sbin), or None."""
    path = os.pathsep.join(filter(None, [os.environ.get("PATH"), "/usr/sbin", "/sbin"]))
    return shutil.which("pgbouncer", path=path)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _config(folder: Path, port: int, upstream: URL) -> Path:
    user = upstream.username or "postgres"
    password = upstream.password or ""
    auth_file = folder / "users.txt"
    auth_file.write_text(f"{_quote(user)} {_quote(str(password))}\n")
    ini = folder / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"* = host={upstream.host or '127.0.0.1'} port={upstream.port or 5432}\n"
        "\n[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "pool_mode = transaction\n"
        "auth_type = trust\n"
        f"auth_file = {auth_file}\n"
        f"admin_users = {user}\n"
        f"default_pool_size = {POOL_SIZE}\n"
        "max_client_conn = 500\n"
        "logfile =\n"
        "pidfile =\n"
    )
    return ini


def _run_as() -> list[str]:
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return ["-u", pwd.getpwnam(name).pw_name]
    raise RuntimeError("pgbouncer refuses root, and neither postgres nor nobody exists")


def _chown(folder: Path, run_as: list[str]) -> None:
    if not run_as:
        return
    for path in (folder, *folder.iterdir()):
        shutil.chown(path, user=run_as[1])


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@contextlib.contextmanager
def running(folder: Path, upstream_url: str) -> Iterator[PgBouncer]:
    """Start PgBouncer in front of ``upstream_url``'s server; stop it on exit.

    Raises:
        RuntimeError: it is not installed, or did not start (its log is quoted).
    """
    binary = executable()
    if binary is None:
        raise RuntimeError("pgbouncer is not installed (apt-get install pgbouncer)")
    upstream = make_url(upstream_url)
    run_as = _run_as()
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    log = folder / "pgbouncer.log"
    for _ in range(3):  # another process may take the free port first
        port = _free_port()
        ini = _config(folder, port, upstream)
        _chown(folder, run_as)
        with log.open("ab") as sink:
            process = subprocess.Popen(
                [binary, *run_as, str(ini)], stdout=sink, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while process.poll() is None and not _listening(port):
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                break
            time.sleep(0.05)
        if process.poll() is None:
            break
    else:
        raise RuntimeError(f"pgbouncer did not start:\n{log.read_text(errors='replace')}")
    try:
        yield PgBouncer("127.0.0.1", port, log)
    finally:
        process.send_signal(signal.SIGTERM)  # immediate shutdown: the tests are done with it
        try:
            process.wait(START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
