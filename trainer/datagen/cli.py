"""``psr datagen`` (run the pipeline) and ``psr datagen merge`` (join shards)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trainer.datagen.runner import STAGES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "datagen",
        help="make multi-subject training data (prompts -> targets -> subjects -> references -> edits -> captions)",
        description="The PSR data pipeline. Stages: " + ", ".join(STAGES) + ". Each stage keeps a per-item "
        "manifest in OUT/manifests, so a run can be resumed, sharded and rerun stage by stage. "
        "Many GPUs: `torchrun --nproc_per_node 8 -m shared.cli datagen ... --shard auto`, or one job per "
        "shard with --shard I/N; then `psr datagen merge OUT`.",
    )
    p.add_argument("--config", help="datagen YAML (psr make-tiny DIR writes DIR/datagen.yaml; configs/datagen_flux.yaml)")
    p.add_argument("--out", help="output folder (a shard writes OUT/shard-IIIII-of-NNNNN)")
    p.add_argument("--stages", default="all", help=f"comma list of {', '.join(STAGES)}, or all (default)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="make only shard I of N (items k with k %% N == I); 'auto' reads RANK/WORLD_SIZE")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT (pending items only)")
    p.add_argument("--rerun", action="store_true",
                   help="discard the records of the first of --stages and every later stage, then make them again")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N items of the run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set filters.server=http://127.0.0.1:8000 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_datagen)

    sub = p.add_subparsers(dest="datagen_command", metavar="merge")
    merge = sub.add_parser("merge", help="join the shards of one run into one dataset folder")
    merge.add_argument("shards", nargs="+", help="shard folders, or a folder holding shard-* subfolders")
    merge.add_argument("--out", dest="merge_out", default=None, metavar="DIR",
                       help="merged dataset folder (default: the single folder given)")
    merge.add_argument("--json", dest="merge_json", action="store_true", help="print the summary as JSON")
    merge.set_defaults(func=cmd_merge)


def cmd_datagen(args: argparse.Namespace) -> int:
    from shared.config import ConfigError, load_config
    from trainer.datagen.categories import parse_shard
    from trainer.datagen.config import DatagenConfig
    from trainer.datagen.report import format_summary
    from trainer.datagen.runner import RunOptions, parse_stages, run_datagen

    if not args.config or not args.out:
        raise ConfigError("--config and --out are required (or use `psr datagen merge SHARDS --out DIR`)")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    _quiet()
    cfg = load_config(DatagenConfig, args.config, args.overrides)
    opts = RunOptions(
        out=Path(args.out), stages=parse_stages(args.stages), shard=parse_shard(args.shard) if args.shard else (0, 1),
        resume=args.resume, rerun=args.rerun, limit=args.limit, progress=not args.no_progress,
    )
    summary = run_datagen(cfg, opts)
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from shared.config import ConfigError
    from trainer.datagen.merge import merge_shards

    if args.merge_out is None and len(args.shards) != 1:
        raise ConfigError("merge: give --out DIR when merging several folders")
    summary = merge_shards([Path(s) for s in args.shards], Path(args.merge_out or args.shards[0]))
    if args.merge_json:
        print(json.dumps(summary, indent=1))
        return 0
    for shard in summary["shards"]:
        print(f"{shard['folder']}: {shard['items']} items, {shard['kept']} kept")
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(summary["dropped"].items())) or "none"
    print(f"merged {len(summary['shards'])} shard(s): {summary['items']} items, {summary['kept']} kept, "
          f"{summary['pending']} pending; dropped: {dropped}")
    print(f"dataset: {summary['dataset']}")
    return 0


def _quiet() -> None:
    from reward_server.models.quiet import quiet_model_libraries

    quiet_model_libraries()
