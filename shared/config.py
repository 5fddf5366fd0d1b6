"""Strict configuration models: typed, documented, unknown keys are an error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys raise, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
    # Set by ``load_config`` on the top-level model: the YAML file and the keys given with --set
    # (relative paths follow the rule in ``shared.paths``).
    _source: Path | None = PrivateAttr(default=None)
    _cli_keys: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @property
    def source(self) -> Path | None:
        """The YAML file this config was read from (``None`` when built in code)."""
        return self._source

    def path_base(self, key: str) -> Path:
        """Where a relative path under dotted ``key`` starts: cwd for ``--set`` values, else the file's folder."""
        if self._source is None or any(key == k or key.startswith(k + ".") for k in self._cli_keys):
            return Path.cwd()
        return self._source.resolve().parent


# Marks a config field that names a checkpoint or file (hub id or local path): checked by
# ``shared.paths.check_model_ref`` and resolved by the relative-path rule.
MODEL_REF = {"model_ref": True}


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message says where and how to fix it."""


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c=value`` inside nested dicts (used by ``--set`` overrides on the command line)."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {key} is not a section")
    node[keys[-1]] = value


def parse_overrides(pairs: list[str]) -> list[tuple[str, Any]]:
    """Parse ``key.sub=value`` strings; values are read as YAML (numbers, booleans, lists)."""
    out = []
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like key.sub=value")
        key, raw = pair.split("=", 1)
        out.append((key.strip(), yaml.safe_load(raw)))
    return out


def load_config(
    model: type[ModelT], path: str | Path | None = None, overrides: list[str] | None = None
) -> ModelT:
    """Build a config model from a YAML file plus ``key=value`` overrides."""
    data = read_yaml(path) if path is not None else {}
    pairs = parse_overrides(overrides or [])
    for key, value in pairs:
        set_dotted(data, key, value)
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{where}: {describe_errors(exc)}") from exc
    if isinstance(config, StrictModel):
        config._source = Path(path) if path is not None else None
        config._cli_keys = frozenset(key for key, _ in pairs)
    return config


def describe_errors(exc: ValidationError) -> str:
    """Pydantic's errors on one line: ``key.sub: what is wrong; other.key: ...``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"{msg}: an unknown key (check its spelling against the documented keys)"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def config_hash(obj: Any) -> str:
    """Short stable hash of a JSON-able object (used in reward versions)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]
