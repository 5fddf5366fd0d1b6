"""Model references and paths in configs: one rule for relative paths, one check for missing ones.

**Rule.** A relative path written in a YAML config is relative to that file's folder (so a
config works from any working directory, like docker compose files); a path given on the
command line (``--set key=value``) is relative to the current directory, like any other
argument typed in a shell. Absolute paths and ``~`` are taken as they are.

**Local or hub?** ``from_pretrained`` takes both, and a local path that does not exist is
retried as a hub id (about 50 s offline) and reported as a network error. A value is a *local
path* when it starts with ``/``, ``./``, ``../`` or ``~``, has a weight-file suffix, has more
than one ``/``, or when its first component is an existing folder; otherwise (``org/name``,
``gpt2``) it is a hub id. A local path that does not exist is reported at once, by
``check_model_ref``, naming the config file and key.
"""

from __future__ import annotations

import re
from pathlib import Path

from shared.config import ConfigError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".json", ".yaml", ".yml", ".ckpt", ".txt")


class MissingPathError(ConfigError, FileNotFoundError):
    """A local path named by a config does not exist."""


def looks_local(value: str, base: Path | None = None) -> bool:
    """Whether ``value`` names a local file or folder rather than a hub repository id."""
    if value.startswith(("/", "./", "../", "~")) or "\\" in value or value in (".", ".."):
        return True
    if value.lower().endswith(_FILE_SUFFIXES) or not _HUB_ID.match(value):
        return True
    return ((base or Path.cwd()) / value.split("/")[0]).is_dir()


def resolve_path(value: str, base: Path, always_local: bool = False) -> str:
    """``value`` made absolute against ``base`` when it is a relative local path; hub ids unchanged."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    if always_local or looks_local(value, base):
        return str((base / path).resolve())
    return value


def where(source: str | Path | None, key: str) -> str:
    """``"FILE: key"`` (or just the key) for messages."""
    return f"{source}: {key}" if source else key


def check_model_ref(value: str | None, key: str, source: str | Path | None = None) -> None:
    """Raise ``MissingPathError`` when ``value`` is a local path that does not exist."""
    if not value or Path(value).expanduser().exists() or not looks_local(value):
        return
    raise MissingPathError(
        f"{where(source, key)}: local path {value} does not exist; fix the path (relative paths start at the "
        "config file's folder, --set values at the current folder) or give a hub id such as org/name"
    )
