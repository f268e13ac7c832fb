"""`compose.yaml`, the `Dockerfile` and `make up`/`make down`, checked without Docker.

Where Docker is missing (as in CI), the stack is checked as far as files go:
``compose.yaml`` against the Compose Specification's JSON schema (vendored in
``tests/data``, see its README), every variable a service sets against what
that service reads, and the environment of the pipeline-db services through
pipeline-db's own configuration loaders and command-line parser, so a
misspelt setting or a URL pointing at the wrong service fails here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from sqlalchemy.engine import make_url

from pipeline_db import config as pipeline_config
from pipeline_db.cli import _parser
from pipeline_db.config import load_database_config, load_server_config, load_worker_config

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
SCHEMA = REPO / "tests" / "data" / "compose-spec.json"
CONFIG = REPO / "config" / "pipeline.yaml"

#: What `make up` needs from the environment; everything else has a default.
REQUIRED = {"POSTGRES_PASSWORD": "s3cret-pw", "PIPELINE_API_TOKEN": "t0ken"}
#: The services built from this repository's Dockerfile.
APP_SERVICES = ("server", "worker")
#: Variables the third-party images read, from their documentation: the official
#: postgres image, and edoburu/pgbouncer (which writes pgbouncer.ini from them).
IMAGE_SETTINGS = {
    "postgres": {"POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_INITDB_ARGS"},
    "edoburu/pgbouncer": {
        "DATABASE_URL",
        "DB_HOST",
        "DB_PORT",
        "DB_NAME",
        "DB_USER",
        "DB_PASSWORD",
        "AUTH_TYPE",
        "POOL_MODE",
        "MAX_CLIENT_CONN",
        "DEFAULT_POOL_SIZE",
        "ADMIN_USERS",
        "IDLE_TRANSACTION_TIMEOUT",
        "QUERY_TIMEOUT",
    },
}

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, $VAR, $$
_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class Unset(Exception):
    """A required variable is unset (Compose stops with its message)."""


def interpolate(value: Any, environ: Mapping[str, str]) -> Any:
    """Compose's interpolation of every string in ``value`` (the specification's rules)."""
    if isinstance(value, dict):
        return {key: interpolate(item, environ) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, environ) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        found = environ.get(name)
        empty = not found
        if op in (":?", "?") and (found is None or (op == ":?" and empty)):
            raise Unset(f"{name}: {arg}")
        if op in (":-", "-") and (found is None or (op == ":-" and empty)):
            return arg
        if op in (":+", "+"):
            return arg if found is not None and not (op == ":+" and empty) else ""
        return found or ""

    return _REFERENCE.sub(replace, value)


def references(value: Any) -> list[re.Match[str]]:
    """Every ``${...}`` or ``$VAR`` in the strings of ``value`` (``$$`` excluded)."""
    if isinstance(value, dict):
        return [m for item in value.values() for m in references(item)]
    if isinstance(value, list):
        return [m for item in value for m in references(item)]
    if not isinstance(value, str):
        return []
    return [m for m in _REFERENCE.finditer(value) if not m.group("escaped")]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # merges the << keys
    return loaded


@pytest.fixture(scope="module")
def stack(compose: dict[str, Any]) -> dict[str, Any]:
    """compose.yaml as Compose runs it with the required variables set."""
    resolved: dict[str, Any] = interpolate(compose, REQUIRED)
    return resolved


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping (Compose accepts a list or a mapping)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


# -- the Compose specification ---------------------------------------------------------


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    # The vendored schema (2021) predates the top-level `name` (2022); add it as
    # the current specification has it.
    schema["properties"]["name"] = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"}
    validator = jsonschema.Draft201909Validator(schema)

    problems = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(compose)
    ]

    assert problems == []


def test_the_schema_catches_a_misspelt_key(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    schema["properties"]["name"] = {"type": "string"}
    broken = {**compose, "services": {**compose["services"], "x": {"image": "a", "enviroment": {}}}}

    assert not jsonschema.Draft201909Validator(schema).is_valid(broken)


# -- variables ------------------------------------------------------------------------------


def test_every_variable_has_a_default_or_stops_compose_with_a_message(
    compose: dict[str, Any],
) -> None:
    bare = [m.group(0) for m in references(compose) if not m.group("op")]
    assert bare == []  # an unset ${VAR} would silently become ""
    for match in references(compose):
        if match.group("op") in (":?", "?"):
            assert match.group("arg"), f"{match.group(0)} stops without saying what to set"


def test_without_the_required_variables_compose_refuses_to_start(
    compose: dict[str, Any],
) -> None:
    for name in REQUIRED:
        with pytest.raises(Unset, match=f"^{name}: set {name}$"):
            interpolate(compose, {k: v for k, v in REQUIRED.items() if k != name})


def test_every_variable_a_service_sets_is_one_it_reads(stack: dict[str, Any]) -> None:
    # What pipeline-db reads: the PIPELINE_* variables of pipeline_db.config, and
    # the ${VAR}s of the configuration file the image ships.
    read_by_pipeline_db = {
        value
        for key, value in vars(pipeline_config).items()
        if key.endswith("_ENV") and isinstance(value, str)
    }
    read_by_pipeline_db |= {m.group("name") for m in references(yaml.safe_load(CONFIG.read_text()))}
    assert {"PIPELINE_DATABASE_URL", "PIPELINE_API_TOKEN"} <= read_by_pipeline_db

    for name, service in stack["services"].items():
        image = str(service.get("image", "")).split(":")[0]
        known = read_by_pipeline_db if name in APP_SERVICES else IMAGE_SETTINGS[image]
        unknown = sorted(set(environment(service)) - known)
        assert unknown == [], f"{name} sets variables that {image or name} never reads"


# -- the pipeline-db services, through pipeline-db's own loaders ---------------------------


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_reach_postgresql_through_pgbouncer_and_listen_directly(
    stack: dict[str, Any], name: str
) -> None:
    env = environment(stack["services"][name])

    database = load_database_config(CONFIG, environ=env)
    load_worker_config(CONFIG, environ=env)

    assert (database.type, database.pgbouncer) == ("postgresql", True)
    url = database.sqlalchemy_url()
    assert (url.host, url.port, url.password) == ("pgbouncer", 5432, REQUIRED["POSTGRES_PASSWORD"])
    assert database.listen_url is not None
    listen = make_url(database.listen_url.get_secret_value())
    assert (listen.host, listen.port, listen.database) == ("postgres", 5432, url.database)
    assert (listen.username, listen.password) == (url.username, url.password)
    postgres = environment(stack["services"]["postgres"])
    assert (url.username, url.database) == (postgres["POSTGRES_USER"], postgres["POSTGRES_DB"])
    pgbouncer = environment(stack["services"]["pgbouncer"])
    assert (pgbouncer["DB_HOST"], pgbouncer["POOL_MODE"]) == ("postgres", "transaction")
    assert pgbouncer["DB_PASSWORD"] == REQUIRED["POSTGRES_PASSWORD"]


def test_server_serves_4_workers_with_a_token_and_upgrades(stack: dict[str, Any]) -> None:
    server = stack["services"]["server"]
    args = _parser().parse_args(server["command"])
    config = load_server_config(CONFIG, environ=environment(server))

    assert (args.command, args.host, args.workers, args.upgrade) == ("serve", "0.0.0.0", 4, True)
    assert config.api_token is not None
    assert config.api_token.get_secret_value() == REQUIRED["PIPELINE_API_TOKEN"]
    assert "127.0.0.1:8000:8000" in server["ports"]
    assert f":{config.port}/health" in " ".join(server["healthcheck"]["test"])
    assert server["depends_on"]["pgbouncer"]["condition"] == "service_healthy"


def test_worker_runs_the_job_runners_once_the_schema_is_current(stack: dict[str, Any]) -> None:
    worker = stack["services"]["worker"]

    assert _parser().parse_args(worker["command"]).command == "worker"
    assert worker["depends_on"]["server"]["condition"] == "service_healthy"
    assert "PIPELINE_API_TOKEN" not in environment(worker)  # it serves nothing


def test_postgresql_16_keeps_its_data_in_a_volume_and_reports_health(
    stack: dict[str, Any],
) -> None:
    postgres = stack["services"]["postgres"]

    assert postgres["image"] == "postgres:16"
    assert "pgdata:/var/lib/postgresql/data" in postgres["volumes"]
    assert "pgdata" in stack["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert stack["services"]["pgbouncer"]["depends_on"]["postgres"]["condition"] == (
        "service_healthy"
    )


# -- the Dockerfile and the Makefile ----------------------------------------------------------


def test_dockerfile_installs_the_package_and_runs_it_as_a_user() -> None:
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())  # continuation lines
    lines = [line.strip() for line in text.splitlines()]
    instructions = [line.split(None, 1) for line in lines if line and not line.startswith("#")]

    assert instructions[0] == ["FROM", "python:3.11-slim"]
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ["ENTRYPOINT", '["pipeline-db"]'] in instructions
    assert any(op == "RUN" and "pip install" in arg for op, arg in instructions)
    for folder in ("pipeline_db", "server", "examples", "config"):
        assert any(op == "COPY" and arg.startswith(folder) for op, arg in instructions), folder


def test_make_up_and_down_drive_docker_compose() -> None:
    makefile = (REPO / "Makefile").read_text()

    for target in ("up", "down"):
        rule = re.search(rf"^{target}:.*## .+\n\t(.+)$", makefile, re.MULTILINE)
        assert rule is not None, f"`make {target}` is missing or undocumented"
        assert rule.group(1).startswith(f"docker compose {target}")
