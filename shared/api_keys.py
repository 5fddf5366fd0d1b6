"""API keys, both sides: how a key is written, which keys are refused, where clients read theirs.

An entry is ``name:key`` (the name identifies the caller on the server: per-caller limits, logs)
or a bare ``key``; the key itself is at least 16 characters. The server takes its list from
``PSR_API_KEYS`` / ``PSR_API_KEYS_FILE`` (``reward_server.auth``). Every client command
(``psr score``, ``psr bench score``, ``psr train``) and ``RewardClient`` read their key from
``PSR_API_KEY`` or from the file named by ``PSR_API_KEY_FILE`` -- never from the command line,
where ``ps`` and launcher error output would show it. Either may hold ``name:key`` (the line
the server has), of which only the key is sent.

Keys copied from an example (``change-me-...``) are refused on both sides: a placeholder that
works is an open door once the port is published.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from shared.config import ConfigError

API_KEY_ENV = "PSR_API_KEY"
API_KEY_FILE_ENV = "PSR_API_KEY_FILE"
MIN_KEY_LENGTH = 16
GENERATE_HINT = "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
# Words that mark a key copied from documentation rather than generated.
_PLACEHOLDER = re.compile(r"change[-_ ]?me|replace[-_ ]?(me|this)|your[-_ ]?(api[-_ ]?)?key|placeholder|example|"
                          r"key[-_ ]?here|<[^>]*>", re.IGNORECASE)


class ApiKeyError(ConfigError):
    """An API key that cannot be used; the message says where it came from and how to fix it."""


def is_placeholder(key: str) -> bool:
    """True for keys that come from an example (``change-me-to-a-long-random-key``, ``<your-key>``)."""
    return bool(_PLACEHOLDER.search(key))


def split_entry(entry: str) -> tuple[str | None, str]:
    """``"name:key"`` -> ``("name", "key")``; a bare key -> ``(None, "key")``."""
    name, sep, key = entry.strip().partition(":")
    return (name.strip(), key.strip()) if sep else (None, entry.strip())


def check_key(key: str, where: str) -> str:
    """Refuse short keys and placeholders; ``where`` names the source in the message."""
    if is_placeholder(key):
        raise ApiKeyError(f"the API key in {where} is a placeholder from an example; replace it with a random key "
                          f"({GENERATE_HINT})")
    if len(key) < MIN_KEY_LENGTH:
        raise ApiKeyError(f"an API key in {where} is shorter than {MIN_KEY_LENGTH} characters; {GENERATE_HINT}")
    return key


def _first_entry(path: Path) -> str | None:
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            return line
    return None


def client_api_key(environ: Mapping[str, str] | None = None) -> str | None:
    """The key a client sends: ``PSR_API_KEY``, or the first entry of the file ``PSR_API_KEY_FILE``
    names; None when neither is set (a server without keys accepts everyone)."""
    env = os.environ if environ is None else environ
    value, file = env.get(API_KEY_ENV, "").strip(), env.get(API_KEY_FILE_ENV, "").strip()
    if value and file:
        raise ApiKeyError(f"both {API_KEY_ENV} and {API_KEY_FILE_ENV} are set; keep one")
    if file:
        path = Path(file).expanduser()
        if not path.is_file():
            raise ApiKeyError(f"{API_KEY_FILE_ENV}={file}: the file does not exist")
        value = _first_entry(path) or ""
        if not value:
            raise ApiKeyError(f"{API_KEY_FILE_ENV}={file}: the file holds no key")
        where = f"{path} ({API_KEY_FILE_ENV})"
    else:
        where = API_KEY_ENV
    if not value:
        return None
    return check_key(split_entry(value)[1], where)
