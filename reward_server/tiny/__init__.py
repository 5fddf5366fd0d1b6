"""``psr make-tiny DIR``: tiny random checkpoints for every model family, plus a ready rewards.yaml.

Each module of this package writes one group of model families and returns the reward config
entries that use them::

    def write(root: Path) -> dict[str, dict]:   # reward name -> RewardSpec fields

Models are saved with ``save_pretrained`` (tokenizers built offline), so rewards load them
through exactly the ``from_pretrained`` path real checkpoints take. Real users point the same
config keys at real checkpoints.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

CONFIG_NAME = "rewards.yaml"


def writer_modules() -> list[str]:
    """Names of the modules in this package that contribute tiny models."""
    return sorted(f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def make_tiny(root: str | Path, seed: int = 0) -> Path:
    """Write every tiny model under ``root`` and ``root/rewards.yaml``; returns the config path."""
    import torch

    root = Path(root).resolve()  # the config names absolute paths: it works from any folder
    root.mkdir(parents=True, exist_ok=True)
    rewards: dict[str, Any] = {}
    for name in writer_modules():
        torch.manual_seed(seed)
        log.debug("writing tiny models from %s", name)
        entries = importlib.import_module(name).write(root)
        clash = sorted(set(entries) & set(rewards))
        if clash:
            raise RuntimeError(f"{name} writes reward entries that already exist: {clash}")
        rewards.update(entries)
    config = {"rewards": rewards}
    path = root / CONFIG_NAME
    path.write_text(
        "# Written by `psr make-tiny`: tiny random models for tests and the demo.\n"
        "# Point `model:` at real checkpoints (hub ids or local paths) for real use.\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    return path
