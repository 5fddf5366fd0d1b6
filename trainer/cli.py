"""``psr train``: Flow-GRPO training from a YAML config (with ``--set key=value`` overrides)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train",
        help="train a multi-reference generator with Flow-GRPO against a reward server",
        description="Flow-GRPO with overlapped remote rewards. Multi-GPU: `accelerate launch -m shared.cli train ...`.",
    )
    p.add_argument("--config", required=True, help="training YAML (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.path=/tmp/tiny/generator (repeatable)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CHECKPOINT",
        help="continue from a checkpoint folder, or the newest under run.output_dir if no value",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--check", action="store_true",
                   help="validate the config, paths and placeholders without loading weights or contacting the server")
    p.add_argument("--rewards-config", default=None, metavar="FILE",
                   help="with --check: the server's rewards.yaml, to check it defines every weighted reward")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from shared.config import ConfigError, load_config
    from trainer.config import TrainConfig
    from trainer.grpo import RequiredRewardFailed
    from trainer.preflight import check_train_config, resolve_paths
    from trainer.scoring import RewardRequestRefused
    from trainer.train import run_training

    try:
        cfg = resolve_paths(load_config(TrainConfig, args.config, args.overrides))
        check_train_config(cfg, args.rewards_config)
    except ConfigError as exc:
        print(f"psr train: {exc}", file=sys.stderr)
        return 2
    if args.check:
        names = ", ".join(f"{k}={v:g}" for k, v in cfg.rewards.reward_weights.items())
        paired = f"; {args.rewards_config} defines them all" if args.rewards_config else ""
        print(f"{args.config}: OK: model {cfg.model.path}, rewards {names}{paired}, output {cfg.run.output_dir} "
              "(no weights loaded; the server is asked at start)")
        return 0
    try:
        summary = run_training(
            cfg,
            progress=not args.no_progress,
            resume=args.resume,
            base_dir=Path(args.config).resolve().parent,
        )
    except (RequiredRewardFailed, RewardRequestRefused, ValueError, FileNotFoundError) as exc:
        print(f"psr train: {exc}", file=sys.stderr)
        return 1
    if not summary["main_process"]:
        return 0
    for step, reward in zip(summary["steps"], summary["reward_mean"], strict=True):
        print(f"step {step + 1}: reward {reward:.4f}")
    print(json.dumps({k: summary[k] for k in ("tensorboard_dir", "sample_grid", "checkpoint")}))
    return 0
