"""A client built only from ``/openapi.json`` can call every route and read every answer."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from reward_server.app import create_app
from reward_server.config import ServerConfig
from reward_server.front import install_front
from reward_server.serving import BackgroundServer
from shared.config import load_config
from shared.protocol import JSON
from tests.servers import wait_for, write_config

KEY = "k" * 24
PUBLIC = {"/healthz", "/readyz"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    config = write_config(tmp_path_factory.mktemp("openapi") / "rewards.yaml", {"bright": {"type": "brightness"}})
    app = create_app(load_config(ServerConfig, config))
    install_front(app, api_keys={KEY: "alice"})
    with BackgroundServer(app) as url:
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 30, "the server to be ready")
        spec = httpx.get(f"{url}/openapi.json", headers={"authorization": f"Bearer {KEY}"}).json()
        yield url, spec


def _check_documented(spec: dict, operation: dict, response: httpx.Response, where: str) -> None:
    """The status is documented, with this media type, and a JSON body matches its schema."""
    documented = operation["responses"].get(str(response.status_code))
    assert documented is not None, f"{where}: answer {response.status_code} is not in the schema ({response.text[:200]})"
    media = response.headers["content-type"].split(";")[0].strip()
    content = {k.split(";")[0].strip(): v for k, v in documented.get("content", {}).items()}
    assert media in content, f"{where}: {response.status_code} answered {media}, the schema says {list(content)}"
    if media == JSON:
        schema = {**content[media]["schema"], "components": spec["components"]}
        jsonschema.validate(response.json(), schema)
    for header in documented.get("headers", {}):
        assert header.lower() in response.headers, f"{where}: {response.status_code} lacks the {header} header"


def _request(spec: dict, path: str, method: str, operation: dict, values: dict[str, str]) -> dict:
    """What a generated client sends: path parameters filled in, the documented example as the body."""
    for param in operation.get("parameters", []):
        if param["in"] == "path":
            path = path.replace("{" + param["name"] + "}", values.get(param["name"], "unknown-id"))
    kwargs: dict = {"method": method.upper(), "url": path}
    if "requestBody" in operation:
        example = operation["requestBody"]["content"][JSON]["example"]
        example = json.loads(json.dumps(example).replace('"clip_t"', '"bright"'))  # a reward this server hosts
        kwargs["json"] = example
    return kwargs


def _credentials(spec: dict, operation: dict, key: str) -> dict[str, str]:
    """The headers a generated client sends for the operation's security requirement (bearer keys)."""
    headers = {}
    for requirement in operation.get("security", spec.get("security", [])):
        for name in requirement:
            scheme = spec["components"]["securitySchemes"][name]
            if scheme["type"] == "http" and scheme["scheme"].lower() == "bearer":
                headers["authorization"] = f"Bearer {key}"
    return headers


def test_every_route_answers_as_its_schema_says(served):
    # /v1/jobs had no body schema, 401/404/429/503 were undocumented and /metrics claimed JSON
    url, spec = served
    values: dict[str, str] = {}
    operations = sorted(((p, m, op) for p, ops in spec["paths"].items() for m, op in ops.items()),
                        key=lambda x: x[1] != "post")  # create a job before polling it
    for path, method, operation in operations:
        kwargs = _request(spec, path, method, operation, values)
        auth = _credentials(spec, operation, KEY)  # the schema said nothing of the key: every call was 401
        assert bool(auth) == (path not in PUBLIC), f"{method} {path}: security {operation.get('security')}"
        answer = httpx.request(kwargs.pop("method"), url + kwargs.pop("url"), headers=auth, timeout=30, **kwargs)
        assert answer.status_code < 300, f"{method} {path}: {answer.status_code} {answer.text[:300]}"
        _check_documented(spec, operation, answer, f"{method.upper()} {path}")
        if path == "/v1/jobs":
            values["job_id"] = answer.json()["id"]
        if path not in PUBLIC:
            kwargs = _request(spec, path, method, operation, values)
            refused = httpx.request(kwargs.pop("method"), url + kwargs.pop("url"), timeout=30, **kwargs)
            assert refused.status_code == 401
            _check_documented(spec, operation, refused, f"{method.upper()} {path} without a key")
    job = spec["paths"]["/v1/jobs/{job_id}"]["get"]
    unknown = httpx.get(f"{url}/v1/jobs/nope", headers={"authorization": f"Bearer {KEY}"})
    _check_documented(spec, job, unknown, "GET /v1/jobs/nope")
    assert unknown.status_code == 404
