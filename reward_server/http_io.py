"""Reading score requests from HTTP bodies (JSON or msgpack) and writing answers in either form.

Both wire forms follow the same rules: each key of an object/map at most once, at most
``MAX_NESTING`` levels of nesting, weights that are numbers (not strings or booleans). Small
bodies are validated on the event loop (tens of microseconds); large ones on a thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

import jiter
import orjson
from fastapi import HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from shared.protocol import (
    JSON,
    MSGPACK,
    DuplicateKey,
    InvalidRequest,
    ScoreRequest,
    TooDeep,
    nesting_error,
    pack,
    unpack,
)

# Bodies up to this size are validated on the event loop: ~10 us per KB (base64 decoding is most
# of it), so <= ~0.6 ms; larger ones (a 100 MB body takes ~1 s) on a thread.
INLINE_PARSE_BYTES = 64 * 1024


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


def _load_json(body: bytes) -> Any:
    try:
        return jiter.from_json(body or b"{}", catch_duplicate_keys=True, allow_inf_nan=False, cache_mode="keys")
    except ValueError as exc:
        text = str(exc)
        if "recursion limit" in text:
            raise HTTPException(422, nesting_error()) from exc
        if "duplicate key" in text:
            raise HTTPException(422, f"body is ambiguous: {text.replace('Detected d', 'd')}; every key of an "
                                "object must be unique") from exc
        raise HTTPException(400, f"body is not valid JSON: {text}") from exc


def parse_model(body: bytes, content_type: str, model: type[BaseModel]) -> Any:
    """Validate a JSON or msgpack body against ``model``; 400/415/422 with a message otherwise."""
    kind = content_type.split(";")[0].strip().lower()
    if kind in (MSGPACK, "application/x-msgpack"):
        try:
            data = unpack(body, unique_keys=True)
        except DuplicateKey as exc:
            raise HTTPException(422, f"body is ambiguous: {exc}") from exc
        except TooDeep as exc:
            raise HTTPException(422, str(exc)) from exc
        except InvalidRequest as exc:
            raise HTTPException(400, str(exc)) from exc
    elif kind in (JSON, ""):
        data = _load_json(body)
    else:
        raise HTTPException(415, f"content type {kind!r} is not supported; send {JSON} or {MSGPACK}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HTTPException(422, format_validation_error(exc)) from exc


async def read_score_request(request: Request, max_bytes: int) -> ScoreRequest:
    """Read and validate a score request; a large body is parsed on a thread (100 MB of JSON take ~1 s)."""
    body = await read_body(request, max_bytes)
    content_type = request.headers.get("content-type", JSON)
    if len(body) <= INLINE_PARSE_BYTES:
        return parse_model(body, content_type, ScoreRequest)
    return await asyncio.to_thread(parse_model, body, content_type, ScoreRequest)


def wants_msgpack(request: Request) -> bool:
    return MSGPACK in request.headers.get("accept", "")


def render(request: Request, payload: BaseModel | dict, status_code: int = 200) -> Response:
    """Answer in msgpack when the caller accepts it, JSON otherwise (non-finite numbers become null)."""
    if wants_msgpack(request):
        data = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
        return Response(pack(data), status_code=status_code, media_type=MSGPACK)
    if isinstance(payload, BaseModel):
        return Response(payload.model_dump_json(), status_code=status_code, media_type=JSON)
    return Response(orjson.dumps(payload), status_code=status_code, media_type=JSON)
