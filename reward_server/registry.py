"""Build and load the rewards a server config names."""

from __future__ import annotations

import logging

from pydantic import ValidationError

from reward_server.config import ServerConfig
from reward_server.rewards import Reward, RewardImportError, get_reward_type
from shared.config import ConfigError, validation_problems

log = logging.getLogger(__name__)


def build_rewards(config: ServerConfig, only: list[str] | None = None) -> dict[str, Reward]:
    """Instantiate (without loading) the configured rewards, optionally only the names in ``only``."""
    names = list(config.rewards)
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ConfigError(f"rewards {unknown} are not in the config; configured: {', '.join(names)}")
        names = [n for n in names if n in only]
    return {name: _build(config, name) for name in names}


def _build(config: ServerConfig, name: str) -> Reward:
    """One reward; a bad type or option names the reward, the key and the file."""
    spec = config.rewards[name]
    try:
        cls = get_reward_type(spec.type)
    except RewardImportError as exc:
        raise ConfigError(f"{config.source}: rewards.{name}.type: {exc}") from None
    try:
        return cls(name, spec)
    except ValidationError as exc:
        problems = validation_problems(exc, cls.Options)
        raise ConfigError("\n".join(f"{config.source}: rewards.{name}.options{'.' + where if where else ''}: {text}"
                                     for where, text in problems)) from None


def load_rewards(rewards: dict[str, Reward]) -> None:
    """Load every reward's model; a failure stops start-up with the reward's name."""
    for name, reward in rewards.items():
        log.info("loading reward %s (%s, model=%s)", name, reward.type_name, reward.spec.model)
        try:
            reward.load()
        except Exception as exc:
            raise RuntimeError(f"reward {name!r} failed to load: {exc}") from exc
        reward.loaded = True
