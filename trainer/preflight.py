"""What ``psr train`` checks before any weights load: paths, placeholders, and the reward server.

Relative paths follow ``shared.paths``' rule: ``model.path``, ``model.init_lora``, ``data.file``
and ``run.output_dir`` written in the config file start at its folder; given with ``--set`` they
start at the current folder.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from shared.config import ConfigError, load_config
from shared.paths import MissingPathError, check_model_ref, resolve_path
from trainer.config import TrainConfig

log = logging.getLogger(__name__)

PLACEHOLDER = "REPLACE_WITH"
SOLID = "solid:"  # an inline reference that is a plain colour, not a file
_FIXES = {
    "model.path": "set it to the generator folder or hub id, e.g. --set model.path=DIR/generator after `psr make-tiny DIR`",
    "data.file": "set it to a dataset file or folder, e.g. --set data.file=/data/train.json",
}


def resolve_paths(cfg: TrainConfig) -> TrainConfig:
    """A copy of ``cfg`` whose local paths are absolute, by the relative-path rule."""
    out = cfg.model_copy(deep=True)
    out.model.path = resolve_path(cfg.model.path, cfg.path_base("model.path"))
    out.run.output_dir = resolve_path(cfg.run.output_dir, cfg.path_base("run.output_dir"), always_local=True)
    if cfg.model.init_lora:
        out.model.init_lora = resolve_path(cfg.model.init_lora, cfg.path_base("model.init_lora"), always_local=True)
    if cfg.data.file and not cfg.data.file.startswith(PLACEHOLDER):
        out.data.file = resolve_path(cfg.data.file, cfg.path_base("data.file"), always_local=True)
    for i, item in enumerate(out.data.prompts):
        base = cfg.path_base(f"data.prompts.{i}")
        item.references = [r if r.startswith(SOLID) else resolve_path(r, base, always_local=True) for r in item.references]
    out._source, out._cli_keys = cfg._source, cfg._cli_keys
    return out


def check_train_config(cfg: TrainConfig, rewards_config: str | Path | None = None) -> None:
    """Raise ``ConfigError`` (one line: file or --set, key, fix) for what would fail after loading the generator."""
    for key, value in (("model.path", cfg.model.path), ("data.file", cfg.data.file)):
        if value and value.startswith(PLACEHOLDER):
            raise ConfigError(f"{cfg.origin(key)}: still the placeholder {value}; {_FIXES[key]}")
    check_model_ref(cfg.model.path, cfg.origin("model.path"))
    if cfg.model.device != "auto":
        from reward_server.models.device import resolve_device

        try:
            resolve_device(cfg.model.device)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"{cfg.origin('model.device')}: {exc}; set it to auto or cpu") from None
    _check_data(cfg)
    if cfg.model.init_lora and not Path(cfg.model.init_lora).exists():
        raise MissingPathError(f"{cfg.origin('model.init_lora')}: {cfg.model.init_lora} does not exist; give a psr "
                               "train checkpoint folder (run.output_dir/checkpoints/step-N) or a PEFT adapter folder")
    if cfg.algorithm == "sft":
        return  # no reward server
    if not cfg.rewards.url:
        raise ConfigError(f"{cfg.origin('rewards.url')}: not set; point it at a reward server, "
                          "e.g. --set rewards.url=http://127.0.0.1:8000")
    if rewards_config is not None:
        from reward_server.config import ServerConfig

        server = load_config(ServerConfig, rewards_config)
        _compare(cfg, set(server.rewards), f"{rewards_config} defines")


def _check_data(cfg: TrainConfig) -> None:
    """The dataset parses and every image it or an inline prompt names exists (nothing is decoded)."""
    from trainer.dataset import GRPO_RULES, SFT_RULES, load_dataset

    if cfg.data.file:
        if not Path(cfg.data.file).exists():
            raise MissingPathError(f"{cfg.origin('data.file')}: {cfg.data.file} does not exist; {_FIXES['data.file']}")
        sft = cfg.algorithm == "sft"  # SFT items need their target image too
        load_dataset(cfg.data.file, SFT_RULES if sft else GRPO_RULES)  # DatasetError lists every problem
    for i, item in enumerate(cfg.data.prompts):
        for j, ref in enumerate(item.references):
            if not ref.startswith(SOLID) and not Path(ref).is_file():
                raise MissingPathError(f"{cfg.origin(f'data.prompts.{i}')}: references[{j}]: {ref} is not a file; "
                                       "give an image path (relative to the config's folder) or solid:R,G,B")


def _compare(cfg: TrainConfig, hosted: set[str], what: str) -> None:
    missing = sorted(set(cfg.rewards.reward_weights) - hosted)
    if missing:
        raise ConfigError(
            f"{cfg.origin('rewards.reward_weights')}: names {missing}, but {what} only "
            f"{sorted(hosted)}; rename the weights or add those rewards to the server's config"
        )


def check_hosted_rewards(client: Any, cfg: TrainConfig) -> None:
    """Before the generator loads: the server must host every weighted reward (skipped for clients
    that cannot list their rewards, e.g. in-process ones)."""
    from shared.client import RetryableError
    from trainer.scoring import RewardRequestRefused

    if not callable(getattr(client, "rewards", None)):
        return
    start = time.monotonic()
    unreachable_since: float | None = None
    while True:
        try:
            hosted = {r["name"] for r in client.rewards()}
            break
        except RetryableError as exc:  # not listening yet (`psr serve ... &` just before), or 5xx: wait
            now = time.monotonic()
            if exc.status is None:  # no answer at all: a server still starting, or none
                if unreachable_since is None:
                    unreachable_since = now
                    log.warning("%s; waiting up to rewards.connect_timeout_s = %g s for the reward service at %s to "
                                "start", exc, cfg.rewards.connect_timeout_s, cfg.rewards.url)
                waited, limit = now - unreachable_since, ("rewards.connect_timeout_s", cfg.rewards.connect_timeout_s)
            else:
                unreachable_since = None
                waited, limit = now - start, ("rewards.ready_timeout_s", cfg.rewards.ready_timeout_s)
            if waited > limit[1]:
                raise RewardRequestRefused(
                    f"cannot list the rewards of the reward service at {cfg.rewards.url}: {exc} (waited "
                    f"{limit[0]} = {limit[1]:g} s); start it (psr serve --config ...) or fix rewards.url") from exc
            time.sleep(0.5)
        except Exception as exc:
            raise RewardRequestRefused(
                f"cannot list the rewards of the reward service at {cfg.rewards.url}: {exc}; "
                "start it (psr serve --config ...) or fix rewards.url"
            ) from exc
    try:
        _compare(cfg, hosted, f"the server at {cfg.rewards.url} hosts")
    except ConfigError as exc:
        raise RewardRequestRefused(str(exc)) from None
