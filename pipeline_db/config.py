"""Typed, validated configuration, and the one place that reads the environment.

The configuration lives in the ``database:`` section of ``config/pipeline.yaml``
(other sections belong to the server and the job runners). String values may
use ``${VAR}`` and ``${VAR:-default}``; ``$${`` writes a literal ``${``.
``PIPELINE_DATABASE_URL``, when set, overrides the file's connection settings;
``PIPELINE_LISTEN_URL`` and ``PIPELINE_PGBOUNCER`` (``true`` or ``false``) set
``listen_url`` and ``pgbouncer``, so a container needs no file of its own.

Every problem (an unknown key, a wrong type, an impossible value, an unset
variable) stops start-up with one :class:`~pipeline_db.errors.ConfigurationError`
that names the key and what is allowed. Secrets (``password``, ``url``,
``listen_url``) are :class:`pydantic.SecretStr` and are never echoed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from pipeline_db.errors import ConfigurationError

CONFIG_PATH = Path("config/pipeline.yaml")
CONFIG_PATH_ENV = "PIPELINE_CONFIG"
DATABASE_URL_ENV = "PIPELINE_DATABASE_URL"
LISTEN_URL_ENV = "PIPELINE_LISTEN_URL"
PGBOUNCER_ENV = "PIPELINE_PGBOUNCER"

SQLITE_PATH = Path("data/pipeline.db")
BUSY_TIMEOUT_MS = 5_000
CONNECTION_TIMEOUT_S = 10.0
POOL_SIZE = 10
MAX_OVERFLOW = 10
POOL_TIMEOUT_S = 30.0
POOL_RECYCLE_S = 1_800
STATEMENT_TIMEOUT_MS = 0
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
BACKUP_INTERVAL_HOURS = 24.0

RETRY_ATTEMPTS = 8
RETRY_BASE_DELAY_S = 0.02
RETRY_MAX_DELAY_S = 1.0
RETRY_DEADLINE_S = 30.0

WORKER_CONCURRENCY = 4
POLL_INTERVAL_S = 1.0
LEASE_S = 30.0
SHUTDOWN_GRACE_S = 30.0
STABILITY_WINDOW_S = 10.0
DISCOVER_INTERVAL_S = 60.0
VIDEO_PATTERNS = ("*.mp4", "*.mov", "*.mkv", "*.m4v", "*.webm", "*.avi")

MAX_BODY_BYTES = 1024 * 1024
PROCESS_WAIT_S = 1_800.0
API_TOKEN_ENV = "PIPELINE_API_TOKEN"
WITH_WORKER_ENV = "PIPELINE_SERVE_WITH_WORKER"

SECRET_FIELDS = frozenset(
    {"password", "url", "listen_url", "webhook_secret", "api_token", "tokens"}
)

_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_URL_SCHEMES = {
    "sqlite": "sqlite",
    "sqlite+aiosqlite": "sqlite",
    "postgres": "postgresql",
    "postgresql": "postgresql",
    "postgresql+asyncpg": "postgresql",
}
_ENCODE_HINT = "percent-encode @ : / % # and spaces in its password (@ is %40)"
_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class RetryPolicy(_Model):
    """How a retried transaction retries transient failures.

    Exponential backoff with full jitter: attempt *n* sleeps a random time in
    ``[0, min(max_delay, base_delay * 2**n))``, and no attempt starts after
    ``deadline`` seconds from the first.
    """

    attempts: int = Field(RETRY_ATTEMPTS, ge=1, le=1_000, description="attempts in all")
    base_delay: float = Field(RETRY_BASE_DELAY_S, gt=0, description="seconds")
    max_delay: float = Field(RETRY_MAX_DELAY_S, gt=0, description="seconds")
    deadline: float = Field(RETRY_DEADLINE_S, gt=0, description="seconds")


class DatabaseConfig(_Model):
    """The database settings: the backend, its connection and pool, backups, retries."""

    type: Literal["sqlite", "postgresql"] = "sqlite"
    url: SecretStr | None = None

    # SQLite
    path: Path = SQLITE_PATH
    journal_mode: Literal["WAL", "DELETE", "TRUNCATE", "PERSIST", "MEMORY"] = "WAL"
    synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "NORMAL"
    busy_timeout: int = Field(BUSY_TIMEOUT_MS, ge=0, description="milliseconds")
    connection_timeout: float = Field(CONNECTION_TIMEOUT_S, gt=0, description="seconds")

    # PostgreSQL
    host: str = "localhost"
    port: int = Field(5432, ge=1, le=65_535)
    database: str = Field("pipeline", min_length=1)
    user: str = Field("pipeline", min_length=1)
    password: SecretStr | None = None
    pool_size: int = Field(POOL_SIZE, ge=1)
    max_overflow: int = Field(MAX_OVERFLOW, ge=0)
    pool_timeout: float = Field(POOL_TIMEOUT_S, gt=0, description="seconds")
    pool_recycle: int = Field(POOL_RECYCLE_S, ge=-1, description="seconds, -1 never")
    pool_pre_ping: bool = False
    statement_timeout: int = Field(STATEMENT_TIMEOUT_MS, ge=0, description="ms, 0 none")
    idle_in_transaction_session_timeout: int = Field(
        IDLE_IN_TRANSACTION_TIMEOUT_MS, ge=0, description="ms, 0 none"
    )
    application_name: str = Field("pipeline-db", max_length=63)
    pgbouncer: bool = False
    listen_url: SecretStr | None = None

    # Backups
    backup_enabled: bool = False
    backup_interval_hours: float = Field(BACKUP_INTERVAL_HOURS, gt=0)
    backup_dir: Path = Path("backups")
    #: Retention: keep the newest ``backup_keep`` and all younger than ``backup_keep_days``.
    backup_keep: int = Field(7, ge=0)
    backup_keep_days: float = Field(14.0, ge=0)

    retry: RetryPolicy = RetryPolicy()

    @model_validator(mode="after")
    def _url_matches_type(self) -> DatabaseConfig:
        if self.url is not None:
            backend = _backend_of(self.url.get_secret_value())
            if backend != self.type:
                raise ValueError(f"url is a {backend} URL but type is {self.type!r}")
        return self

    def sqlalchemy_url(self) -> URL:
        """The SQLAlchemy URL for this configuration, built with ``URL.create``.

        Built, never formatted, so passwords holding ``@ : / % #`` or spaces
        survive. Its ``repr`` and ``str`` hide the password.
        """
        if self.url is not None:
            return make_url(self.url.get_secret_value()).set(drivername=_DRIVERS[self.type])
        if self.type == "sqlite":
            return URL.create(_DRIVERS["sqlite"], database=str(self.path))
        return URL.create(
            _DRIVERS["postgresql"],
            username=self.user,
            password=self.password.get_secret_value() if self.password else None,
            host=self.host,
            port=self.port,
            database=self.database,
        )

    def describe(self) -> str:
        """A one-line description safe to log: the backend and where, never a secret."""
        url = self.sqlalchemy_url()
        if self.type == "sqlite":
            return f"sqlite at {url.database}"
        return f"postgresql at {url.host}:{url.port or 5432}/{url.database} as {url.username}"


class DiscoverConfig(_Model):
    """Where the ``discover`` job looks for new videos."""

    folders: list[Path] = Field(default_factory=list)
    include: list[str] = Field(default_factory=lambda: list(VIDEO_PATTERNS))
    exclude: list[str] = Field(default_factory=list)
    stability_window: float = Field(STABILITY_WINDOW_S, ge=0, description="seconds")
    #: Seconds between scheduled scans of ``folders`` (0: only on request).
    interval: float = Field(DISCOVER_INTERVAL_S, ge=0, description="seconds")


class WorkerConfig(_Model):
    """The job runners' settings (the ``worker:`` section)."""

    concurrency: int = Field(WORKER_CONCURRENCY, ge=1)
    prefetch: int = Field(0, ge=0)
    kinds: list[str] | None = None
    poll_interval: float = Field(POLL_INTERVAL_S, gt=0, description="seconds")
    lease: float = Field(LEASE_S, gt=0, description="seconds")
    shutdown_grace: float = Field(SHUTDOWN_GRACE_S, ge=0, description="seconds")
    #: Job kind -> ``package.module:function``.
    handlers: dict[str, str] = Field(default_factory=dict)
    #: Pipeline stage -> ``package.module:function`` run by ``process_episode``.
    stages: dict[str, str] = Field(default_factory=dict)
    discover: DiscoverConfig = DiscoverConfig()
    webhook_secret: SecretStr | None = None


class ServerConfig(_Model):
    """The HTTP server's settings (the ``server:`` section)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65_535)
    workers: int = Field(1, ge=1)
    #: The bearer token (``PIPELINE_API_TOKEN`` sets it too).
    api_token: SecretStr | None = None
    #: More bearer tokens, by name (the name is logged, never the token).
    tokens: dict[str, SecretStr] = Field(default_factory=dict)
    public_metrics: bool = False
    max_body_bytes: int = Field(MAX_BODY_BYTES, ge=1_024)
    #: Longest wait of the legacy ``POST /episodes/process`` (the workflows' timeout).
    process_wait: float = Field(PROCESS_WAIT_S, ge=0, description="seconds")
    #: Upgrade a schema that is behind at start-up instead of refusing to serve.
    auto_upgrade: bool = False
    #: Run job runners in each server process.
    with_worker: bool = False
    idempotency_ttl_hours: float = Field(24.0, gt=0)
    #: uvicorn's access log, one line per request: about 100 µs of a worker's CPU
    #: per request (bench/http.py). /metrics counts requests by route and status either way.
    access_log: bool = True

    def token_names(self) -> dict[str, str]:
        """Every configured token, mapped to its name ("default" for ``api_token``)."""
        found = {value.get_secret_value(): name for name, value in self.tokens.items()}
        if self.api_token is not None:
            found[self.api_token.get_secret_value()] = "default"
        return found


def _backend_of(url: str) -> str:
    if url.split("?", 1)[0].count("@") > 1:
        # "user:p@ss@host/db" parses with host "ss@host" and "user:p@ss/x@host/db"
        # with database "x@host/db": pieces of the password would be logged.
        raise ValueError(f"url has more than one '@'; {_ENCODE_HINT}")
    parsed = _parse_url(url)
    if parsed is None:
        raise ValueError(f"url is not a database URL; {_ENCODE_HINT}")
    scheme = parsed.drivername
    if scheme not in _URL_SCHEMES:
        raise ValueError(f"url scheme {scheme!r} is not one of {sorted(_URL_SCHEMES)}")
    return _URL_SCHEMES[scheme]


def _parse_url(url: str) -> URL | None:
    # make_url's own errors quote pieces of the URL (a password with an unencoded
    # ":" ends up in "invalid literal for int()"): none is passed on, not even as
    # the __context__ of ours, so callers raise outside this handler.
    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        return None


def interpolate(value: Any, environ: Mapping[str, str], key: str = "") -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of ``value``.

    Raises:
        ConfigurationError: a variable is unset and has no default.
    """
    if isinstance(value, dict):
        return {
            k: interpolate(v, environ, f"{key}.{k}" if key else str(k)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [interpolate(v, environ, f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise ConfigurationError(
            f"{key}: environment variable {name} is not set and has no default "
            f"(write ${{{name}:-default}} to give one)",
            key=key,
        )

    return _VAR.sub(replace, value)


def database_config(
    raw: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None
) -> DatabaseConfig:
    """Validate a ``database:`` section (already interpolated) into a :class:`DatabaseConfig`.

    ``PIPELINE_DATABASE_URL`` in ``environ`` overrides the section's connection,
    ``PIPELINE_LISTEN_URL`` its ``listen_url`` and ``PIPELINE_PGBOUNCER`` its ``pgbouncer``.

    Raises:
        ConfigurationError: naming the key and what is allowed.
    """
    data = dict(raw or {})
    env = os.environ if environ is None else environ
    override = env.get(DATABASE_URL_ENV)
    if override:
        data["url"] = override
        try:
            data["type"] = _backend_of(override)
        except ValueError as exc:
            raise ConfigurationError(f"{DATABASE_URL_ENV}: {exc}", key=DATABASE_URL_ENV) from None
    for name, key in ((LISTEN_URL_ENV, "listen_url"), (PGBOUNCER_ENV, "pgbouncer")):
        if env.get(name):
            data[key] = env[name]
    try:
        return DatabaseConfig.model_validate(data)
    except ValidationError as exc:
        message = _describe(exc, "database")
    # Raised outside the handler: a ValidationError quotes its input, secrets
    # included, and must not ride along as __context__ (``from None`` would only
    # hide it from tracebacks).
    raise ConfigurationError(message, key="database")


def load_config(
    path: Path | str | None = None, *, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Read the YAML configuration file and interpolate the environment into it.

    The file is ``path``, else ``$PIPELINE_CONFIG``, else ``config/pipeline.yaml``
    (a missing default file means an empty configuration). Returns the whole
    interpolated mapping; pass its ``database`` section to :func:`database_config`.

    Raises:
        ConfigurationError: the file is missing, not YAML, or names an unset variable.
    """
    env = os.environ if environ is None else environ
    explicit = path is not None or CONFIG_PATH_ENV in env
    file = Path(path if path is not None else env.get(CONFIG_PATH_ENV, CONFIG_PATH))
    if not file.exists():
        if explicit:
            raise ConfigurationError(f"configuration file {file} does not exist", key="config")
        return {}
    loaded = _read_yaml(file) or {}
    if not isinstance(loaded, dict):
        raise ConfigurationError(f"{file}: the top level must be a mapping", key="config")
    result: dict[str, Any] = interpolate(loaded, env)
    return result


def load_database_config(
    path: Path | str | None = None, *, environ: Mapping[str, str] | None = None
) -> DatabaseConfig:
    """Load and validate the ``database:`` section of the configuration file.

    Raises:
        ConfigurationError: see :func:`load_config` and :func:`database_config`.
    """
    section = load_config(path, environ=environ).get("database") or {}
    if not isinstance(section, dict):
        raise ConfigurationError("database: must be a mapping", key="database")
    return database_config(section, environ=environ)


def load_worker_config(
    path: Path | str | None = None, *, environ: Mapping[str, str] | None = None
) -> WorkerConfig:
    """Load and validate the ``worker:`` section of the configuration file.

    Raises:
        ConfigurationError: naming the key and what is allowed.
    """
    section = load_config(path, environ=environ).get("worker") or {}
    if not isinstance(section, dict):
        raise ConfigurationError("worker: must be a mapping", key="worker")
    try:
        return WorkerConfig.model_validate(section)
    except ValidationError as exc:
        problem = _describe(exc, "worker", WorkerConfig)
    raise ConfigurationError(problem, key="worker")


def load_server_config(
    path: Path | str | None = None, *, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Load the ``server:`` section; ``PIPELINE_API_TOKEN`` sets the bearer token.

    Raises:
        ConfigurationError: naming the key and what is allowed.
    """
    env = os.environ if environ is None else environ
    section = load_config(path, environ=environ).get("server") or {}
    if not isinstance(section, dict):
        raise ConfigurationError("server: must be a mapping", key="server")
    section = dict(section)
    if env.get(API_TOKEN_ENV):
        section["api_token"] = env[API_TOKEN_ENV]
    if env.get(WITH_WORKER_ENV) == "1":
        section["with_worker"] = True
    try:
        return ServerConfig.model_validate(section)
    except ValidationError as exc:
        problem = _describe(exc, "server", ServerConfig)
    raise ConfigurationError(problem, key="server")


def _read_yaml(file: Path) -> Any:
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        problem = _yaml_problem(exc)
    # Raised outside the handler: the YAMLError quotes the offending line, which
    # may hold a password, and must not become our __context__.
    raise ConfigurationError(f"{file} is not valid YAML: {problem}", key="config")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The problem and where it is, without the quoted line."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return type(exc).__name__


def _describe(exc: ValidationError, section: str, root: type[BaseModel] | None = None) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in (section, *error["loc"]))
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            allowed = _model_at(error["loc"][:-1], root or DatabaseConfig).model_fields
            message = "unknown key; allowed keys: " + ", ".join(sorted(allowed))
        elif error["type"] == "value_error":
            # Our own validators' messages, without pydantic's "Value error, " prefix.
            message = str(error.get("ctx", {}).get("error", message))
        elif error["loc"] and not SECRET_FIELDS.intersection(map(str, error["loc"])):
            message += f" (got {error['input']!r})"
        problems.append(f"{loc}: {message}")
    return "invalid configuration: " + "; ".join(problems)


def _model_at(loc: tuple[int | str, ...], root: type[BaseModel]) -> type[BaseModel]:
    """The model that holds the keys at ``loc`` (``("retry",)`` is a RetryPolicy)."""
    model: type[BaseModel] = root
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return model
