"""The n8n workflows of ``examples/n8n``: importable, wired, and aimed at routes that exist.

Each workflow is checked as n8n (2.x) would load it, and each HTTP Request
node against the server's route table (``server.api.REGISTRY``): the method
and path of an operation, query parameters and body keys that operation
accepts, the bearer credential, Retry On Fail, and an ``Idempotency-Key`` on
every POST (n8n resends after any error, issue 5).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import server.app  # noqa: F401 - importing the app registers every route
from server.api import REGISTRY, Operation

EXAMPLES = Path(__file__).parents[2] / "examples" / "n8n"
WORKFLOWS = sorted(EXAMPLES.glob("*.json"))
HTTP_REQUEST = "n8n-nodes-base.httpRequest"
WEBHOOK = "n8n-nodes-base.webhook"
CREDENTIAL = "pipeline-db token"
#: An expression such as ``{{ $json.id }}``: a path segment or a value filled in at run time.
EXPRESSION = re.compile(r"\{\{.*?\}\}", re.DOTALL)
#: The first expression of a URL is the API's base URL, from the Settings node.
BASE_URL = "={{ $('Settings').first().json.api_url }}"
NODE_REFERENCE = re.compile(r"""\$\(\s*['"]([^'"]+)['"]\s*\)""")
WEBHOOK_PATH = re.compile(r"/webhook/([A-Za-z0-9_-]+)")


def _load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def _http_nodes(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [node for node in workflow["nodes"] if node["type"] == HTTP_REQUEST]


def _operation(method: str, path: str) -> Operation | None:
    """The operation serving ``method path`` (path segments may be expressions)."""
    concrete = EXPRESSION.sub("x", path)
    for op in REGISTRY:
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(op.path)) + "$"
        if op.method == method and re.match(pattern, concrete):
            return op
    return None


def _path(node: dict[str, Any]) -> str:
    url = node["parameters"]["url"]
    assert url.startswith(BASE_URL), f"{node['name']}: the URL must start with {BASE_URL}"
    return str(url.removeprefix(BASE_URL))


def _headers(node: dict[str, Any]) -> dict[str, str]:
    parameters = node["parameters"]
    if not parameters.get("sendHeaders"):
        return {}
    return {h["name"]: h["value"] for h in parameters["headerParameters"]["parameters"]}


def test_there_are_the_three_workflows_of_the_async_pattern() -> None:
    assert [path.name for path in WORKFLOWS] == [
        "discover-and-process-webhook.json",
        "process-and-poll-job.json",
        "read-episode-and-clips.json",
    ]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.stem)
def test_workflow_is_importable_and_wired(path: Path) -> None:
    workflow = _load(path)
    assert {"name", "nodes", "connections", "settings"} <= workflow.keys()
    names = [node["name"] for node in workflow["nodes"]]
    assert len(names) == len(set(names)), "node names must be unique"
    ids = [node["id"] for node in workflow["nodes"]]
    assert len(ids) == len(set(ids)), "node ids must be unique"
    for node in workflow["nodes"]:
        assert node["type"].startswith("n8n-nodes-base."), node["name"]
        assert isinstance(node["typeVersion"], int | float), node["name"]
        assert len(node["position"]) == 2, node["name"]
        assert isinstance(node["parameters"], dict), node["name"]

    reached: set[str] = set()
    for source, outputs in workflow["connections"].items():
        assert source in names, f"connection from unknown node {source!r}"
        for output in outputs["main"]:
            for target in output:
                assert target["node"] in names, f"{source} -> unknown node {target['node']!r}"
                assert target["type"] == "main"
                reached.add(target["node"])
    triggers = {n["name"] for n in workflow["nodes"] if n["type"].endswith(("Trigger", "webhook"))}
    assert triggers, "a workflow needs a trigger"
    assert set(names) - triggers <= reached, "every node but the triggers has an input"

    for name in NODE_REFERENCE.findall(json.dumps(workflow)):
        assert name in names, f"an expression names the unknown node {name!r}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.stem)
def test_http_nodes_call_existing_routes_as_n8n_should(path: Path) -> None:
    nodes = _http_nodes(_load(path))
    assert nodes
    for node in nodes:
        parameters = node["parameters"]
        where = f"{path.name}: {node['name']}"
        assert 4 <= node["typeVersion"] < 5, where
        method = parameters.get("method", "GET")
        op = _operation(method, _path(node))
        assert op is not None, f"{where}: no route serves {method} {_path(node)}"

        assert parameters["authentication"] == "genericCredentialType", where
        assert parameters["genericAuthType"] == "httpBearerAuth", where
        assert node["credentials"]["httpBearerAuth"]["name"] == CREDENTIAL, where
        assert node.get("retryOnFail") is True, where
        assert node["maxTries"] >= 2 and node["waitBetweenTries"] > 0, where

        key = _headers(node).get("Idempotency-Key")
        if method == "POST":
            assert key and EXPRESSION.search(key), f"{where}: a POST needs an Idempotency-Key"
            assert "$now" not in key and "random" not in key.lower(), f"{where}: key not stable"
        if parameters.get("sendQuery"):
            assert op.query is not None, where
            for parameter in parameters["queryParameters"]["parameters"]:
                assert parameter["name"] in op.query.model_fields, f"{where}: {parameter['name']}"
        if parameters.get("sendBody"):
            assert op.body is not None and parameters["specifyBody"] == "json", where
            body = json.loads(EXPRESSION.sub("x", parameters["jsonBody"].removeprefix("=")))
            assert set(body) <= set(op.body.model_fields), f"{where}: unknown body keys"


def test_webhook_urls_sent_to_the_api_reach_a_webhook_node_of_the_workflow() -> None:
    for path in WORKFLOWS:
        workflow = _load(path)
        webhooks = {n["parameters"]["path"] for n in workflow["nodes"] if n["type"] == WEBHOOK}
        for node in _http_nodes(workflow):
            body = node["parameters"].get("jsonBody", "")
            for target in WEBHOOK_PATH.findall(body):
                assert target in webhooks, f"{path.name}: {node['name']} calls back /{target}"
        assert len(webhooks) == len([n for n in workflow["nodes"] if n["type"] == WEBHOOK])
