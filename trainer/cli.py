"""``psr train``: SFT or Flow-GRPO training from a YAML config (with ``--set key=value`` overrides)."""

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
        help="train a multi-reference generator: SFT on a dataset, or Flow-GRPO against a reward server",
        description="algorithm: sft (flow matching on dataset targets) or grpo (Flow-GRPO with overlapped remote "
        "rewards), as the config says. SIGINT/SIGTERM finish the current step, save a checkpoint and say how "
        "to resume. Multi-GPU: `accelerate launch -m shared.cli train ...`.",
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
    from trainer.export import register as register_export

    register_export(subparsers)


def _train(args: argparse.Namespace) -> int:
    from shared.client import RewardServiceError
    from shared.config import ConfigError, load_config
    from trainer.config import TrainConfig
    from trainer.grpo import RequiredRewardFailed
    from trainer.preflight import check_train_config, resolve_paths
    from trainer.run import RunExists, RunFinished, TrainingInterrupted
    from trainer.scoring import RewardRequestRefused
    from trainer.train import run_training

    try:
        cfg = resolve_paths(load_config(TrainConfig, args.config, args.overrides))
        check_train_config(cfg, args.rewards_config)
    except ConfigError as exc:
        print(f"psr train: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if cfg.algorithm == "sft":
            print(f"{args.config}: OK: sft, model {cfg.model.path}, data {cfg.data.file}, output {cfg.run.output_dir} "
                  "(no weights loaded)")
            return 0
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
    except TrainingInterrupted as exc:
        print(f"psr train: {exc}\nresume with: {_command(args, ['--resume'])}", file=sys.stderr)
        return 130 if exc.signal_name == "SIGINT" else 143
    except RunExists as exc:
        print(f"psr train: {exc}\ncontinue it with: {_command(args, ['--resume'])}", file=sys.stderr)
        return 2
    except RunFinished as exc:
        more = f"run.steps={2 * exc.total}"
        print(f"psr train: {exc}\nto train longer: {_command(args, ['--set', more, '--resume'])}")
        return 0
    except (RequiredRewardFailed, RewardRequestRefused, RewardServiceError, ValueError, FileNotFoundError) as exc:
        print(f"psr train: {exc}", file=sys.stderr)  # RewardServiceError: e.g. rewards not ready in time
        return 1
    if not summary["main_process"]:
        return 0
    for step, value in zip(summary["steps"], summary["headline_values"], strict=True):
        print(f"step {step}: {summary['headline']} {value:.4f}")
    print(json.dumps({k: summary[k] for k in ("tensorboard_dir", "sample_grid", "checkpoint")}))
    return 0


def _command(args: argparse.Namespace, extra: list[str]) -> str:
    """The ``psr train`` command line of this run with ``extra`` arguments (for resume hints)."""
    import shlex

    parts = ["psr", "train", "--config", args.config]
    for override in args.overrides:
        if override.startswith("run.steps=") and "--set" in extra:
            continue  # replaced by the new run.steps
        parts += ["--set", "rewards.api_key=***" if override.startswith("rewards.api_key=") else override]
    return shlex.join(parts + extra)
