"""What ``/openapi.json`` says beyond FastAPI's defaults, so a client generated from it can call
every route: both wire forms of the bodies, every error answer with its schema and Retry-After
header, the media type of non-JSON answers, and which routes take the bearer API key."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import BaseModel

from reward_server.auth import PUBLIC_PATHS
from reward_server.metrics import PROMETHEUS_CONTENT_TYPE
from shared.protocol import JSON, MSGPACK, ScoreRequest


class ErrorAnswer(BaseModel):
    """The body of every 4xx/5xx answer."""

    detail: str


class PrometheusText(Response):
    media_type = PROMETHEUS_CONTENT_TYPE


_ERROR_REF = {"$ref": f"#/components/schemas/{ErrorAnswer.__name__}"}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
_ERRORS = {
    400: "malformed body: not valid JSON or msgpack",
    401: "missing or invalid API key (send `Authorization: Bearer <key>`); only when the server has keys",
    404: "no such job: unknown, expired, or another caller's",
    413: "body larger than limits.max_body_bytes",
    415: f"content type other than {JSON} or {MSGPACK}",
    422: "invalid request; the message names the field (unknown reward, missing input, bad image, a limit)",
    429: "this caller already has limits.max_queued_samples_per_caller samples waiting",
    503: "a requested reward is not ready (model loading, no live worker), or the server already holds "
         "limits.max_pixels_in_flight decoded pixels",
    504: "scores not ready within the server's request_timeout_s",
}


BEARER = "apiKey"
_BEARER_SCHEME = {
    "type": "http", "scheme": "bearer",
    "description": "an API key (the key of a `name:key` entry of PSR_API_KEYS); required when the server has keys",
}


def retry_after(seconds: float) -> dict[str, str]:
    """The Retry-After header of a 429/503 (whole seconds, at least 1)."""
    return {"Retry-After": str(max(1, round(seconds)))}


def answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` for these error codes, each with its schema (and Retry-After where it is sent)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:  # JSON whatever the route's own answers are (/metrics answers text)
        out[code] = {"description": _ERRORS[code], "content": {JSON: {"schema": _ERROR_REF}}}
        if code in (429, 503):
            out[code]["headers"] = _RETRY_AFTER
    return out


def msgpack_too(description: str) -> dict[int | str, dict[str, Any]]:
    """The 200 answer also comes as msgpack when the request says ``Accept: application/msgpack``."""
    return {200: {"description": description, "content": {MSGPACK: {"schema": {"type": "string", "format": "binary"}}}}}


def add_body_schema(openapi: dict[str, Any], path: str, model: type[BaseModel]) -> None:
    """Document both wire forms of ``model`` as the request body of ``POST path`` in an OpenAPI dict."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    openapi["paths"][path]["post"]["requestBody"] = {
        "required": True,
        "content": {
            JSON: {"schema": ref, "example": schema.get("examples", [None])[0]},
            MSGPACK: {
                "schema": {"type": "string", "format": "binary"},
                "description": f"{model.__name__} msgpack-encoded; images as bytes (PNG/JPEG) or "
                "{format: raw, shape: [h, w, 3], data: bytes}",
            },
        },
    }


def install_schema(app: FastAPI) -> None:
    """Build ``/openapi.json`` on first use, from the routes present then (the job routes included)."""

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = doc.setdefault("components", {})
            components.setdefault("schemas", {})[ErrorAnswer.__name__] = ErrorAnswer.model_json_schema()
            components["securitySchemes"] = {BEARER: _BEARER_SCHEME}
            for path, operations in doc["paths"].items():
                if "post" in operations and path in ("/v1/score", "/v1/jobs"):
                    add_body_schema(doc, path, ScoreRequest)
                for operation in operations.values():  # so generated clients send the key (and know where not to)
                    operation["security"] = [] if path in PUBLIC_PATHS else [{BEARER: []}]
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]
