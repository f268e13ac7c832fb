"""`pipeline_db.config`: loading, interpolation, the URL override, validation, URLs, secrets.

The PostgreSQL tests use the server of ``tests/conftest.py`` (``127.0.0.1:5432``
by default). Its ``pg_hba.conf`` may trust local connections, in which case the
server ignores passwords; :func:`test_asyncpg_transmits_the_exact_password` then
proves the password crosses the wire intact by speaking the start of the
PostgreSQL protocol itself and asking for the password in clear text.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
import traceback
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

from pipeline_db import (
    ConfigurationError,
    Database,
    DatabaseConfig,
    PipelineDBError,
    RetryPolicy,
    TransientError,
    database_config,
    load_config,
    load_database_config,
)
from pipeline_db.config import DATABASE_URL_ENV, LISTEN_URL_ENV, PGBOUNCER_ENV
from tests.conftest import IN_CI, admin_dsn

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config" / "pipeline.yaml"

HOSTILE = "p@ss:w/rd%#  x"
UNICODE = "pässwörd 密码 🔑 \u2215@:/?"  # \u2215 is DIVISION SLASH
QUOTES = 'it\'s "quoted" \\ $1 ;-- ${HOME}'
PASSWORDS = [
    pytest.param(HOSTILE, id="url-metacharacters"),
    pytest.param(UNICODE, id="unicode"),
    pytest.param(QUOTES, id="quotes"),
]

FAST_RETRY = {"attempts": 2, "base_delay": 0.001, "max_delay": 0.001, "deadline": 5}


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def postgres(password: str | None = None, **values: Any) -> DatabaseConfig:
    return database_config(
        {"type": "postgresql", "host": "127.0.0.1", "password": password, **values}, environ={}
    )


def configuration_error(raw: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigurationError) as info:
        database_config(raw, environ=environ or {})
    return str(info.value)


def exception_text(error: BaseException) -> str:
    """Everything a logger or error tracker could show of ``error``: chain, reprs, context."""
    parts = ["".join(traceback.format_exception(error))]
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current), repr(current.args)]
        if isinstance(current, PipelineDBError):
            parts.append(repr(current.context))
        parts.append(repr(current.__cause__) + repr(current.__context__))
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def assert_hidden(secret: str, *texts: str) -> None:
    """``secret`` appears in none of ``texts``, neither raw nor percent-encoded."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret), quote(secret)}
    for shown in texts:
        for form in forms:
            assert form not in shown, f"the secret leaked ({form!r}) in: {shown}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- the shipped file -----------------------------------------------------------


def test_shipped_config_is_sqlite_at_data_pipeline_db() -> None:
    config = load_database_config(SHIPPED, environ={})

    assert config.type == "sqlite"
    assert config.path == Path("data/pipeline.db")
    assert config.url is None
    assert config.journal_mode == "WAL"
    assert config.retry == RetryPolicy()
    url = config.sqlalchemy_url()
    assert (url.drivername, url.database) == ("sqlite+aiosqlite", "data/pipeline.db")


def test_shipped_config_is_the_default_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)

    assert load_database_config(environ={}) == load_database_config(SHIPPED, environ={})


def test_shipped_postgresql_section_is_valid_once_uncommented(tmp_path: Path) -> None:
    lines = []
    for line in SHIPPED.read_text(encoding="utf-8").splitlines():
        if line.strip() == "type: sqlite":
            continue
        commented = re.match(r"  # ([a-z_]+):", line)
        if commented and commented.group(1) in DatabaseConfig.model_fields:
            line = "  " + line[4:]
        lines.append(line)
    body = "\n".join(lines)
    env = {"PGHOST": "db.internal", "PGPASSWORD": HOSTILE}

    config = database_config(
        load_config(write(tmp_path, body), environ=env)["database"], environ=env
    )

    assert config.type == "postgresql"
    assert (config.host, config.port, config.database, config.user) == (
        "db.internal",
        5432,
        "pipeline",
        "pipeline",
    )
    assert config.statement_timeout == 30_000
    assert config.password is not None
    assert config.password.get_secret_value() == HOSTILE


def test_missing_default_file_means_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    assert load_database_config(environ={}) == DatabaseConfig()


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_database_config(tmp_path / "nope.yaml", environ={})
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_database_config(environ={"PIPELINE_CONFIG": str(tmp_path / "nope.yaml")})


def test_pipeline_config_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "database:\n  path: elsewhere.db\n")

    assert load_database_config(environ={"PIPELINE_CONFIG": str(path)}).path == Path("elsewhere.db")


# -- interpolation --------------------------------------------------------------


def test_set_variable_is_interpolated(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "database:\n  type: postgresql\n  host: ${DB_HOST}\n  port: ${DB_PORT}\n"
        "  password: ${DB_PASSWORD}\n  application_name: app-${DB_HOST}-x\n",
    )
    env = {"DB_HOST": "db.internal", "DB_PORT": "6543", "DB_PASSWORD": HOSTILE}

    config = load_database_config(path, environ=env)

    assert (config.host, config.port, config.application_name) == (
        "db.internal",
        6543,
        "app-db.internal-x",
    )
    assert config.password is not None
    assert config.password.get_secret_value() == HOSTILE


def test_default_applies_only_when_unset(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "database:\n  path: ${SQLITE_PATH:-data/default.db}\n"
        "  busy_timeout: ${BUSY:-250}\n  backup_dir: x${EMPTY:-}y\n",
    )

    unset = load_database_config(path, environ={})
    assert (unset.path, unset.busy_timeout, unset.backup_dir) == (
        Path("data/default.db"),
        250,
        Path("xy"),
    )
    given = load_database_config(path, environ={"SQLITE_PATH": "/srv/p.db", "BUSY": "9"})
    assert (given.path, given.busy_timeout) == (Path("/srv/p.db"), 9)


def test_unset_variable_without_default_names_key_path_and_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "database:\n  type: postgresql\n  password: ${PGPASSWORD}\n")

    with pytest.raises(ConfigurationError) as info:
        load_database_config(path, environ={})

    assert "database.password" in str(info.value)
    assert "PGPASSWORD" in str(info.value)
    assert info.value.context["key"] == "database.password"


def test_unset_variable_in_a_nested_section_names_the_full_path(tmp_path: Path) -> None:
    path = write(tmp_path, "database:\n  retry:\n    attempts: ${RETRY_ATTEMPTS}\n")

    with pytest.raises(ConfigurationError, match=r"database\.retry\.attempts.*RETRY_ATTEMPTS"):
        load_database_config(path, environ={})


def test_double_dollar_escapes_interpolation(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "database:\n  application_name: cost $${HOME} and $${UNSET:-x}\n",
    )

    config = load_database_config(path, environ={"HOME": "/root"})

    assert config.application_name == "cost ${HOME} and ${UNSET:-x}"


def test_values_from_the_environment_are_not_interpolated_again(tmp_path: Path) -> None:
    path = write(tmp_path, "database:\n  type: postgresql\n  password: ${DB_PASSWORD}\n")

    config = load_database_config(path, environ={"DB_PASSWORD": "a${UNSET}b"})

    assert config.password is not None
    assert config.password.get_secret_value() == "a${UNSET}b"


# -- PIPELINE_DATABASE_URL ------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+asyncpg"])
def test_postgresql_url_overrides_the_file(tmp_path: Path, scheme: str) -> None:
    path = write(tmp_path, "database:\n  type: sqlite\n  path: data/file.db\n  pool_size: 3\n")
    env = {DATABASE_URL_ENV: f"{scheme}://alice:s3cret@db.internal:6543/jobs"}

    config = load_database_config(path, environ=env)

    assert config.type == "postgresql"
    assert config.pool_size == 3  # the rest of the file still applies
    url = config.sqlalchemy_url()
    assert url.drivername == "postgresql+asyncpg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "alice",
        "s3cret",
        "db.internal",
        6543,
        "jobs",
    )


@pytest.mark.parametrize("scheme", ["sqlite", "sqlite+aiosqlite"])
def test_sqlite_url_overrides_a_postgresql_file(tmp_path: Path, scheme: str) -> None:
    path = write(tmp_path, "database:\n  type: postgresql\n  host: db.internal\n")
    env = {DATABASE_URL_ENV: f"{scheme}:///{tmp_path}/over.db"}

    config = load_database_config(path, environ=env)

    assert config.type == "sqlite"
    url = config.sqlalchemy_url()
    assert (url.drivername, url.database) == ("sqlite+aiosqlite", f"{tmp_path}/over.db")


@pytest.mark.parametrize("password", PASSWORDS)
def test_override_with_a_percent_encoded_password_round_trips(password: str) -> None:
    url = URL.create("postgresql", username="u", password=password, host="h", database="d")
    env = {DATABASE_URL_ENV: url.render_as_string(hide_password=False)}

    assert database_config({}, environ=env).sqlalchemy_url().password == password


def test_empty_override_is_ignored() -> None:
    assert database_config({"path": "x.db"}, environ={DATABASE_URL_ENV: ""}).type == "sqlite"


def test_listen_url_and_pgbouncer_come_from_the_environment(tmp_path: Path) -> None:
    # What compose.yaml sets: the app through PgBouncer, LISTEN straight to PostgreSQL.
    path = write(tmp_path, "database:\n  type: sqlite\n  pgbouncer: false\n")
    env = {
        DATABASE_URL_ENV: "postgresql://app:pw@pgbouncer:6432/pipeline",
        LISTEN_URL_ENV: "postgresql://app:pw@postgres:5432/pipeline",
        PGBOUNCER_ENV: "true",
    }

    config = load_database_config(path, environ=env)

    assert (config.type, config.pgbouncer) == ("postgresql", True)
    assert config.listen_url is not None
    assert make_url(config.listen_url.get_secret_value()).host == "postgres"
    unset = {LISTEN_URL_ENV: "", PGBOUNCER_ENV: ""}
    assert database_config({"pgbouncer": True}, environ=unset).pgbouncer is True
    assert database_config({}, environ=unset).listen_url is None
    assert database_config({"pgbouncer": True}, environ={PGBOUNCER_ENV: "0"}).pgbouncer is False


def test_bad_pgbouncer_variable_is_refused() -> None:
    assert "database.pgbouncer" in configuration_error({}, {PGBOUNCER_ENV: "sometimes"})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "not a database URL"),
        ("mysql://u:pw@h/db", "'postgresql'"),
        ("postgresql://u:pw@h:port/db", "not a database URL"),
    ],
)
def test_bad_override_names_the_variable(url: str, expected: str) -> None:
    message = configuration_error({}, {DATABASE_URL_ENV: url})

    assert DATABASE_URL_ENV in message
    assert expected in message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:zq1@kw9@h/db",  # host "kw9@h"
        "postgresql://u:zq1@kw9/rd7@h/db",  # host "kw9", database "rd7@h/db"
        "postgresql://u:zq1@kw9:rd7@h/db",  # port "rd7@h"
        "postgresql://u:hunter2@[::1/db",
    ],
)
def test_unencoded_password_in_url_is_rejected_without_echoing_it(url: str) -> None:
    password = url.split("://u:")[1].rsplit("@", 1)[0]
    for raw, environ in [({}, {DATABASE_URL_ENV: url}), ({"type": "postgresql", "url": url}, {})]:
        with pytest.raises(ConfigurationError) as info:
            database_config(raw, environ=environ)
        assert "percent-encode" in str(info.value)
        text_shown = exception_text(info.value)
        assert_hidden(password, text_shown)
        for fragment in re.split("[@:/]", password):
            assert fragment not in text_shown


# -- validation -----------------------------------------------------------------

ALL_KEYS = sorted(DatabaseConfig.model_fields)
RETRY_KEYS = sorted(RetryPolicy.model_fields)


def test_unknown_key_names_it_and_lists_the_allowed_keys() -> None:
    message = configuration_error({"hots": "db.internal"})

    assert "database.hots: unknown key" in message
    assert "allowed keys: " + ", ".join(ALL_KEYS) in message


def test_unknown_retry_key_lists_the_retry_policy_keys() -> None:
    message = configuration_error({"retry": {"attemps": 3}})

    assert "database.retry.attemps: unknown key" in message
    assert "allowed keys: " + ", ".join(RETRY_KEYS) in message
    assert "pool_size" not in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"pool_size": "ten"}, ["database.pool_size", "valid integer", "'ten'"]),
        ({"pool_size": -1}, ["database.pool_size", "greater than or equal to 1", "-1"]),
        ({"type": "mysql"}, ["database.type", "'sqlite' or 'postgresql'", "'mysql'"]),
        ({"port": 70000}, ["database.port", "less than or equal to 65535", "70000"]),
        ({"port": 0}, ["database.port", "greater than or equal to 1"]),
        ({"journal_mode": "wal"}, ["database.journal_mode", "'WAL'", "'DELETE'", "'wal'"]),
        ({"pool_pre_ping": "maybe"}, ["database.pool_pre_ping", "valid boolean", "'maybe'"]),
        ({"retry": 5}, ["database.retry", "RetryPolicy", "5"]),
        ({"retry": {"attempts": 0}}, ["database.retry.attempts", "greater than or equal to 1"]),
        ({"retry": {"deadline": "soon"}}, ["database.retry.deadline", "valid number", "'soon'"]),
        (
            {"type": "postgresql", "url": "sqlite:///x.db"},
            ["url is a sqlite URL but type is 'postgresql'"],
        ),
        (
            {"type": "sqlite", "url": "postgresql://u@h/db"},
            ["url is a postgresql URL but type is 'sqlite'"],
        ),
        ({"type": "postgresql", "url": "mysql://u@h/db"}, ["'mysql'", "'postgresql'"]),
    ],
)
def test_invalid_value_names_the_key_and_what_is_allowed(
    raw: dict[str, Any], expected: list[str]
) -> None:
    message = configuration_error(raw)

    assert message.startswith("invalid configuration: database")
    for part in expected:
        assert part in message
    assert "Value error" not in message


def test_every_problem_is_reported_in_one_message() -> None:
    message = configuration_error({"pool_size": -1, "port": 70000, "hots": 1})

    assert "database.pool_size" in message
    assert "database.port" in message
    assert "database.hots" in message


def test_invalid_file_stops_loading(tmp_path: Path) -> None:
    path = write(tmp_path, "database:\n  pool_size: -1\n")

    with pytest.raises(ConfigurationError, match=r"database\.pool_size"):
        load_database_config(path, environ={})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("database: [1, 2]\n", "database: must be a mapping"),
        ("- database\n", "top level must be a mapping"),
        ("database:\n  type: [sqlite\n", "is not valid YAML"),
    ],
)
def test_malformed_file_is_a_configuration_error(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected):
        load_database_config(write(tmp_path, body), environ={})


def test_config_is_frozen() -> None:
    config = DatabaseConfig()

    with pytest.raises(ValueError, match="frozen"):
        config.pool_size = 1  # type: ignore[misc]


# -- URLs -----------------------------------------------------------------------


@pytest.mark.parametrize("password", PASSWORDS)
def test_url_keeps_a_hostile_password_intact(password: str) -> None:
    config = postgres(password, port=6543, user="user@corp", database="my db")

    url = config.sqlalchemy_url()

    assert url.drivername == "postgresql+asyncpg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "user@corp",
        password,
        "127.0.0.1",
        6543,
        "my db",
    )
    rendered = url.render_as_string(hide_password=False)
    assert make_url(rendered).password == password
    assert make_url(rendered).username == "user@corp"


@pytest.mark.parametrize("password", PASSWORDS)
def test_url_field_with_an_encoded_password_round_trips(password: str) -> None:
    given = URL.create("postgres", username="u", password=password, host="h", database="d")

    config = database_config(
        {"type": "postgresql", "url": given.render_as_string(hide_password=False)}, environ={}
    )

    url = config.sqlalchemy_url()
    assert (url.drivername, url.password) == ("postgresql+asyncpg", password)


def test_sqlite_url_is_the_path(tmp_path: Path) -> None:
    path = tmp_path / "a dir#1" / "p@th.db"
    url = database_config({"path": str(path)}, environ={}).sqlalchemy_url()

    assert (url.drivername, url.database) == ("sqlite+aiosqlite", str(path))
    assert make_url(url.render_as_string()).database == str(path)


# -- secrets --------------------------------------------------------------------


@pytest.mark.parametrize("password", PASSWORDS)
def test_password_is_never_shown_by_the_config(password: str, tmp_path: Path) -> None:
    config = postgres(password)
    url = config.sqlalchemy_url()

    assert_hidden(
        password,
        repr(config),
        str(config),
        config.describe(),
        config.model_dump_json(),
        repr(Database(config)),
        repr(url),
        str(url),
        url.render_as_string(),
    )


@pytest.mark.parametrize("field", ["url", "listen_url"])
def test_urls_are_secrets_too(field: str) -> None:
    url = URL.create("postgresql", username="u", password=HOSTILE, host="h", database="d")
    config = database_config(
        {"type": "postgresql", field: url.render_as_string(hide_password=False)}, environ={}
    )

    assert_hidden(
        HOSTILE,
        repr(config),
        str(config),
        config.describe(),
        config.model_dump_json(),
        repr(Database(config)),
        repr(config.sqlalchemy_url()),
    )


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"password": {"value": HOSTILE}}, id="password-as-dict"),
        pytest.param({"password": [HOSTILE]}, id="password-as-list"),
        pytest.param({"password": HOSTILE, "port": 70000}, id="other-field-invalid"),
        pytest.param({"password": HOSTILE, "unknown": 1}, id="unknown-key"),
        pytest.param({"password": HOSTILE, "type": "mysql"}, id="bad-type"),
        pytest.param({"url": {"dsn": HOSTILE}}, id="url-as-dict"),
        pytest.param({"listen_url": [HOSTILE]}, id="listen-url-as-list"),
        pytest.param({"retry": {"password": HOSTILE}}, id="password-in-retry"),
        pytest.param({"url": f"sqlite:///{quote(HOSTILE, safe='')}.db"}, id="mismatched-url-type"),
    ],
)
def test_configuration_errors_never_show_the_password(raw: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        database_config({"type": "postgresql", **raw}, environ={})

    assert_hidden(HOSTILE, exception_text(info.value))


def test_yaml_syntax_error_does_not_quote_the_password_line(tmp_path: Path) -> None:
    path = write(tmp_path, "database:\n  type: postgresql\n  password: hunter2: oops\n")

    with pytest.raises(ConfigurationError) as info:
        load_database_config(path, environ={})

    assert "line 3" in str(info.value)
    assert_hidden("hunter2", exception_text(info.value))


# -- real connections -------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_reachable() -> None:
    """Skip (fail under CI=true) when the test PostgreSQL server is unreachable."""

    async def probe() -> None:
        conn = await asyncpg.connect(admin_dsn(), timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        if IN_CI:
            pytest.fail(f"CI=true and PostgreSQL is unreachable: {error}")
        pytest.skip(f"PostgreSQL is unreachable: {error}")


@pytest.fixture
async def hostile_role(
    request: pytest.FixtureRequest, postgres_reachable: None
) -> AsyncIterator[tuple[str, str]]:
    """A LOGIN role whose password is ``request.param``; yields (name, password)."""
    name, password = f"pdbtest_role_{uuid.uuid4().hex[:10]}", str(request.param)
    admin = await asyncpg.connect(admin_dsn())
    try:
        # CREATE ROLE takes no bind parameters: let the server quote them.
        create = await admin.fetchval(
            "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)",
            name,
            password,
        )
        await admin.execute(create)
        yield name, password
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
        await admin.close()


def admin_target() -> tuple[str, int]:
    url = make_url(admin_dsn())
    return url.host or "127.0.0.1", url.port or 5432


@pytest.mark.postgresql
@pytest.mark.parametrize("hostile_role", PASSWORDS, indirect=True)
async def test_database_connects_with_a_hostile_password(hostile_role: tuple[str, str]) -> None:
    """A role with a hostile password connects through `Database`.

    Under ``trust`` the server ignores the password, so this proves the URL
    reaches asyncpg unmangled (host, user and database intact); under
    ``scram-sha-256`` it proves the password too. The round trip of the
    password itself is asserted here and proven on the wire below.
    """
    name, password = hostile_role
    host, port = admin_target()
    config = postgres(password, host=host, port=port, user=name, database="postgres")

    async with Database(config) as db, db.read() as conn:
        assert (await conn.execute(text("SELECT current_user"))).scalar_one() == name

    url = config.sqlalchemy_url()
    assert url.password == password
    assert make_url(url.render_as_string(hide_password=False)).password == password


class ClearTextAuthServer:
    """Just enough of a PostgreSQL server to ask for a clear-text password and keep it.

    It answers SSL and GSS encryption requests with "N", reads the startup
    message, sends AuthenticationCleartextPassword, records the PasswordMessage,
    then refuses the login with SQLSTATE 28P01.
    """

    def __init__(self) -> None:
        self.passwords: list[bytes] = []
        self.users: list[str] = []
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> ClearTextAuthServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack("!i", await reader.readexactly(4))
                body = await reader.readexactly(length - 4)
                (code,) = struct.unpack("!i", body[:4])
                if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest
                    writer.write(b"N")
                    continue
                params = body[4:].split(b"\0")
                self.users.append(params[params.index(b"user") + 1].decode())
                break
            writer.write(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
            await writer.drain()
            kind = await reader.readexactly(1)
            (length,) = struct.unpack("!i", await reader.readexactly(4))
            payload = await reader.readexactly(length - 4)
            assert kind == b"p"
            self.passwords.append(payload.removesuffix(b"\0"))
            fields = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed\0\0"
            writer.write(b"E" + struct.pack("!i", 4 + len(fields)) + fields)
            await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()


@pytest.mark.parametrize("password", PASSWORDS)
async def test_asyncpg_transmits_the_exact_password(
    password: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with ClearTextAuthServer() as server:
        config = postgres(password, port=server.port, user="alice", retry=FAST_RETRY)

        async with Database(config) as db:
            with pytest.raises(ConfigurationError) as info:
                async with db.read():
                    pass

    assert server.users == ["alice"]
    assert server.passwords == [password.encode()]
    assert info.value.context.get("cause") == "authentication"
    assert_hidden(password, exception_text(info.value), caplog.text)


async def test_unreachable_postgresql_raises_transient_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    config = postgres(HOSTILE, port=free_port(), connection_timeout=2, retry=FAST_RETRY)

    async def work(conn: Any) -> None:
        raise AssertionError("never connected, so never called")

    async with Database(config) as db:
        with pytest.raises(TransientError) as retried:
            await db.transaction(work)
        with pytest.raises(TransientError) as read:
            async with db.read():
                pass

    assert type(retried.value) is TransientError
    assert (retried.value.cause, retried.value.attempts) == ("connection", 2)
    assert "gave up after 2 attempts" in str(retried.value)
    assert type(read.value) is TransientError
    assert read.value.cause == "connection"
    assert "retrying" in caplog.text  # the retry was logged, so the logs were checked
    assert_hidden(HOSTILE, exception_text(retried.value), exception_text(read.value), caplog.text)
