"""Build and load the rewards a server config names."""

from __future__ import annotations

import logging

from pydantic import ValidationError

from reward_server.config import ServerConfig
from reward_server.rewards import Reward, RewardImportError, get_reward_type
from shared.config import ConfigError, validation_problems
from shared.paths import resolve_path

log = logging.getLogger(__name__)


def build_rewards(config: ServerConfig, only: list[str] | None = None) -> dict[str, Reward]:
    """Instantiate (without loading) the configured rewards, optionally only the names in ``only``."""
    names = list(config.rewards)
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ConfigError(f"rewards {unknown} are not in the config; configured: {', '.join(names)}")
        names = [n for n in names if n in only]
    rewards = {}
    for name in names:
        reward = _build(config, name)
        reward.origin = lambda key, name=name: config.origin(f"rewards.{name}.{key}")
        for key, value in reward.model_refs().items():  # relative paths: see shared.paths
            reward.set_model_ref(key, resolve_path(value, config.path_base(f"rewards.{name}.{key}")))
        rewards[name] = reward
    return rewards


def _build(config: ServerConfig, name: str) -> Reward:
    """One reward, unloaded; a bad type or option names the file, the reward and the key."""
    spec = config.rewards[name]
    try:
        cls = get_reward_type(spec.type)
    except RewardImportError as exc:
        raise ConfigError(f"{config.origin(f'rewards.{name}.type')}: {exc}") from None
    try:
        return cls(name, spec)
    except ValidationError as exc:
        problems = validation_problems(exc, cls.Options)
        raise ConfigError("\n".join(f"{config.origin(f'rewards.{name}.options' + ('.' + key if key else ''))}: {text}"
                                     for key, text in problems)) from None


def check_rewards(rewards: dict[str, Reward]) -> None:
    """Everything that can be checked without loading weights: local paths, devices, each reward's own checks."""
    from reward_server.models.device import resolve_device

    for reward in rewards.values():
        reward.check()
        try:
            resolve_device(reward.spec.device)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"{reward.origin('device')}: {exc}; set it to auto or cpu") from exc


def load_rewards(rewards: dict[str, Reward]) -> None:
    """Load every reward's model; a failure stops start-up with the reward's name."""
    check_rewards(rewards)  # a missing local path or GPU is reported at once, not after a hub timeout
    for name, reward in rewards.items():
        log.info("loading reward %s (%s, model=%s)", name, reward.type_name, reward.spec.model)
        try:
            reward.load()
        except Exception as exc:
            raise RuntimeError(f"reward {name!r} failed to load: {exc}") from exc
        reward.loaded = True


def check_report(path: str, rewards: dict[str, Reward], note: str | None = None) -> str:
    """The one-line summary ``--check`` prints when a config passes."""
    hosted = ", ".join(f"{n} ({r.type_name})" for n, r in rewards.items())
    extra = f"; {note}" if note else ""
    return f"{path}: OK: {len(rewards)} rewards: {hosted} (no weights loaded; hub ids not looked up{extra})"
