"""API keys: ``Authorization: Bearer <key>`` on every route except the health probes.

Keys come from ``PSR_API_KEYS`` (comma-separated) and/or a file named by ``PSR_API_KEYS_FILE``
(one per line, ``#`` comments). An entry ``name:key`` names its caller (used for per-caller
limits and logs); a bare key is named by a short hash. Keys are compared in constant time.
Short keys and placeholders copied from examples are refused (``shared.api_keys``).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import os
from pathlib import Path
from typing import Any

from shared.api_keys import check_key, split_entry
from shared.config import ConfigError

log = logging.getLogger(__name__)

API_KEYS_ENV = "PSR_API_KEYS"
API_KEYS_FILE_ENV = "PSR_API_KEYS_FILE"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
ANONYMOUS = "anonymous"

# The caller of the request being served (set by the middleware, read by the limiter).
CURRENT_CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("psr_caller", default=ANONYMOUS)


def _parse_entry(entry: str, where: str) -> tuple[str, str]:
    name, key = split_entry(entry)
    check_key(key, where)
    return key, name or "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def load_api_keys(keys: str | None = None, keys_file: str | Path | None = None) -> dict[str, str]:
    """Key -> caller name, from the arguments or else the environment; empty means auth is off."""
    keys = os.environ.get(API_KEYS_ENV, "") if keys is None else keys
    keys_file = os.environ.get(API_KEYS_FILE_ENV) if keys_file is None else keys_file
    out: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in keys.split(","))):
        key, name = _parse_entry(entry, API_KEYS_ENV)
        out[key] = name
    if keys_file:
        path = Path(keys_file)
        if not path.is_file():
            raise ConfigError(f"API key file {path} does not exist")
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                key, name = _parse_entry(line, str(path))
                out[key] = name
    return out


class ApiKeys:
    """Checks bearer tokens against the configured keys in constant time."""

    def __init__(self, keys: dict[str, str]):
        self._keys = [(k.encode(), name) for k, name in keys.items()]

    def caller(self, authorization: str | None) -> str | None:
        """The caller's name for a valid ``Bearer`` header, else None."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        given = token.strip().encode()
        found = None
        for key, name in self._keys:  # no early exit: timing does not reveal which key matched
            if hmac.compare_digest(given, key):
                found = name
        return found


class AuthMiddleware:
    """Pure ASGI middleware: 401 without a valid key, except on ``PUBLIC_PATHS``."""

    def __init__(self, app: Any, keys: ApiKeys, public: frozenset[str] = PUBLIC_PATHS):
        self.app = app
        self.keys = keys
        self.public = public

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        raw = headers.get(b"authorization")
        caller = self.keys.caller(raw.decode("latin-1") if raw else None)
        if caller is None:
            why = "missing API key" if raw is None else "invalid API key"
            body = json.dumps({"detail": f"{why}: send `Authorization: Bearer <key>`"}).encode()
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})["caller"] = caller
        token = CURRENT_CALLER.set(caller)
        try:
            await self.app(scope, receive, send)
        finally:
            CURRENT_CALLER.reset(token)
