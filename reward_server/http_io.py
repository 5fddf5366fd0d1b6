"""Reading score requests from HTTP bodies (JSON or msgpack) and writing answers in either form."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from shared.protocol import JSON, MSGPACK, InvalidRequest, ScoreRequest, pack, unpack


async def read_body(request: Request, max_bytes: int) -> bytes:
    """Read the body, refusing (413) anything over ``max_bytes`` before it is all in memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, f"body of {declared} bytes exceeds the limit of {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(413, f"body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def format_validation_error(exc: ValidationError) -> str:
    """Turn pydantic errors into one line per problem, each naming the field."""
    lines = []
    for err in exc.errors()[:10]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        lines.append(f"{where}: {err['msg']}")
    more = f" (and {exc.error_count() - 10} more)" if exc.error_count() > 10 else ""
    return "; ".join(lines) + more


def parse_model(body: bytes, content_type: str, model: type[BaseModel]) -> Any:
    """Validate a JSON or msgpack body against ``model``; 400/415/422 with a message otherwise."""
    kind = content_type.split(";")[0].strip().lower()
    try:
        if kind in (MSGPACK, "application/x-msgpack"):
            return model.model_validate(unpack(body))
        if kind in (JSON, ""):
            return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise HTTPException(400, f"body is not valid JSON: {exc.errors()[0]['msg']}") from exc
        raise HTTPException(422, format_validation_error(exc)) from exc
    except InvalidRequest as exc:
        raise HTTPException(400, str(exc)) from exc
    raise HTTPException(415, f"content type {kind!r} is not supported; send {JSON} or {MSGPACK}")


async def read_score_request(request: Request, max_bytes: int) -> ScoreRequest:
    """Read and validate a score request; parsing runs on a thread (a 100 MB JSON body takes ~0.5 s)."""
    body = await read_body(request, max_bytes)
    return await asyncio.to_thread(parse_model, body, request.headers.get("content-type", JSON), ScoreRequest)


def wants_msgpack(request: Request) -> bool:
    return MSGPACK in request.headers.get("accept", "")


def render(request: Request, payload: BaseModel | dict, status_code: int = 200) -> Response:
    """Answer in msgpack when the caller accepts it, JSON otherwise."""
    data = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
    if wants_msgpack(request):
        return Response(pack(data), status_code=status_code, media_type=MSGPACK)
    return JSONResponse(data, status_code=status_code)


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
            JSON: {"schema": ref},
            MSGPACK: {
                "schema": {"type": "string", "format": "binary"},
                "description": f"{model.__name__} msgpack-encoded; images as bytes (PNG/JPEG) or "
                "{format: raw, shape: [h, w, 3], data: bytes}",
            },
        },
    }
