"""Strict configuration models: typed, documented, unknown keys are an error."""

from __future__ import annotations

import hashlib
import json
import types
import typing
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

    def from_command_line(self, key: str) -> bool:
        """Whether dotted ``key`` (or a section holding it) was given with ``--set``."""
        return any(key == k or key.startswith(k + ".") for k in self._cli_keys)

    def path_base(self, key: str) -> Path:
        """Where a relative path under dotted ``key`` starts: cwd for ``--set`` values, else the file's folder."""
        if self._source is None or self.from_command_line(key):
            return Path.cwd()
        return self._source.resolve().parent

    def origin(self, key: str) -> str:
        """Where the value of ``key`` came from, for messages: ``--set KEY``, ``FILE: KEY`` or ``KEY``."""
        if self.from_command_line(key):
            return f"--set {key}"
        return f"{self._source}: {key}" if self._source is not None else key


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
        raise ConfigError(f"{path}: not valid YAML {yaml_problem(exc)}; check the indentation and quoting there") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's several-line report as one phrase: ``at line 4, column 4: expected <block end>, ...``."""
    mark = getattr(exc, "problem_mark", None)
    where = f"at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None and context_mark.line != getattr(mark, "line", None):
        problem += f" ({context} that starts at line {context_mark.line + 1})"
    return f"{where}: {problem}" if where else f": {problem}"


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
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key.strip()}: {raw!r} is not valid YAML {yaml_problem(exc)}; fix it, or quote "
                              "the whole value to give a string (--set 'key=\"text\"')") from None
        out.append((key.strip(), value))
    return out


def load_config(
    model: type[ModelT], path: str | Path | None = None, overrides: list[str] | None = None
) -> ModelT:
    """Build a config model from a YAML file plus ``key=value`` overrides.

    Errors say, one line per problem, which file (or ``--set``) and key are wrong and why.
    """
    data = read_yaml(path) if path is not None else {}
    pairs = parse_overrides(overrides or [])
    for key, value in pairs:
        set_dotted(data, key, value)
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        lines = []
        for where, text in validation_problems(exc, model):
            given = [k for k, _ in pairs if where == k or where.startswith(k + ".") or k.startswith(where + ".")]
            if given:
                lines.append(f"--set {where or given[-1]}: {text}")
            else:
                origin = str(path) if path is not None else "configuration"
                lines.append(f"{origin}: {where}: {text}" if where else f"{origin}: {text}")
        raise ConfigError("\n".join(lines)) from None
    if isinstance(config, StrictModel):
        config._source = Path(path) if path is not None else None
        config._cli_keys = frozenset(key for key, _ in pairs)
    return config


def _unwrap(annotation: Any) -> Any:
    """The model type inside ``Optional[M]`` / ``M | None``; the annotation itself otherwise."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else annotation
    return annotation


def known_keys(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """The keys the section at ``loc`` (a pydantic error location) accepts, if it is a model."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif origin in (dict, list, tuple) or current in (dict, list):
            args = typing.get_args(current)
            current = args[-1] if args else None
        else:
            return None
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def validation_problems(exc: ValidationError, model: type[BaseModel] | None = None) -> list[tuple[str, str]]:
    """``(dotted key, what is wrong)`` for each error of ``exc``; unknown keys list the valid ones."""
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc)
        kind, msg = err["type"], err["msg"]
        if kind == "extra_forbidden":
            keys = known_keys(model, loc[:-1]) if model is not None else None
            text = "unknown key" + (f"; valid keys here: {', '.join(keys)}" if keys else "")
        elif kind == "missing":
            text = "required, but not given"
        else:
            text = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
            value = err.get("input")
            if not isinstance(value, (dict, list)) and kind != "value_error":
                shown = repr(value)
                text += f" (got {shown[:80] + '...' if len(shown) > 80 else shown})"
        out.append((where, text))
    return out


def config_hash(obj: Any) -> str:
    """Short stable hash of a JSON-able object (used in reward versions)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]
