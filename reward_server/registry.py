"""Build and load the rewards a server config names."""

from __future__ import annotations

import logging

from reward_server.config import ServerConfig
from reward_server.rewards import Reward, get_reward_type
from shared.config import ConfigError

log = logging.getLogger(__name__)


def build_rewards(config: ServerConfig, only: list[str] | None = None) -> dict[str, Reward]:
    """Instantiate (without loading) the configured rewards, optionally only the names in ``only``."""
    names = list(config.rewards)
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ConfigError(f"rewards {unknown} are not in the config; configured: {', '.join(names)}")
        names = [n for n in names if n in only]
    return {name: get_reward_type(config.rewards[name].type)(name, config.rewards[name]) for name in names}


def load_rewards(rewards: dict[str, Reward]) -> None:
    """Load every reward's model; a failure stops start-up with the reward's name."""
    for name, reward in rewards.items():
        log.info("loading reward %s (%s, model=%s)", name, reward.type_name, reward.spec.model)
        try:
            reward.load()
        except Exception as exc:
            raise RuntimeError(f"reward {name!r} failed to load: {exc}") from exc
        reward.loaded = True
