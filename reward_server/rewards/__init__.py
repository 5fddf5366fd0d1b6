"""Registry of reward types. Adding a reward = one module here + one config entry.

Every module of this package is imported when the registry is first used; a module that fails
to import stops start-up with its error instead of silently vanishing. Heavy dependencies
(transformers, open_clip) are imported inside ``load()``, so discovery stays cheap.
"""

from __future__ import annotations

import importlib
import pkgutil

from reward_server.rewards.base import Reward, ScoreResult
from shared.config import ConfigError

__all__ = ["Reward", "RewardImportError", "ScoreResult", "get_reward_type", "register", "reward_types"]

_TYPES: dict[str, type[Reward]] = {}
_discovered = False


class RewardImportError(ConfigError):
    """A reward module failed to import or a reward type is unknown or duplicated."""


def register(cls: type[Reward]) -> type[Reward]:
    """Class decorator that makes a reward type available to configs under ``cls.type_name``."""
    name = getattr(cls, "type_name", None)
    if not name:
        raise RewardImportError(f"{cls.__qualname__} has no type_name")
    existing = _TYPES.get(name)
    if existing is not None and existing is not cls:
        raise RewardImportError(
            f"reward type {name!r} is registered twice: {existing.__module__}.{existing.__qualname__} "
            f"and {cls.__module__}.{cls.__qualname__}"
        )
    _TYPES[name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = f"{__name__}.{info.name}"
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise RewardImportError(f"reward module {module} failed to import: {exc!r}") from exc
    _discovered = True


def reward_types() -> dict[str, type[Reward]]:
    """All registered reward types, by name."""
    _discover()
    return dict(_TYPES)


def get_reward_type(name: str) -> type[Reward]:
    """Look a reward type up by name, or import ``package.module:Class`` for rewards outside this package."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise RewardImportError(f"cannot import reward class {name!r}: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, Reward)):
            raise RewardImportError(f"{name!r} is not a Reward subclass")
        return cls
    types = reward_types()
    if name not in types:
        raise RewardImportError(f"unknown reward type {name!r}; known types: {', '.join(sorted(types))}")
    return types[name]
