"""``psr bench generate``, ``psr bench score`` and ``psr bench make-synthetic``."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from shared.cli_args import add_api_key_refusal, add_server_argument, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="PSRBench: generate, score, tables and radar plots")
    sub = bench.add_subparsers(dest="bench_command", metavar="SUBCOMMAND", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", required=True, help="PSRBench root (Attribute.json ... Four.json + references)")
        p.add_argument("--out", required=True, help="output folder (reused to resume)")
        p.add_argument("--subsets", default=None, help="comma list of subsets (default: all seven)")
        p.add_argument("--restart", action="store_true", help="discard earlier work in --out and start over")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")

    gen = sub.add_parser("generate", help="generate every item's image with a multi-reference model")
    common(gen)
    gen.add_argument("--model", required=True, help="pipeline folder or hub id (FLUX.1 Kontext-style layout)")
    gen.add_argument("--lora", default=None,
                     help="LoRA to apply: a PEFT adapter folder or a `psr train` checkpoint (folder or lora.safetensors)")
    gen.add_argument("--lora-alpha", type=float, default=None,
                     help="lora.alpha of the training config (only for a bare lora.safetensors without lora.json beside it)")
    gen.add_argument("--steps", type=positive_int, default=28, help="sampling steps")
    gen.add_argument("--size", type=image_side, default=512, help="output side in pixels (multiple of 16)")
    gen.add_argument("--ref-size", type=image_side, default=None,
                     help="side the references are resized to, a multiple of 16 (default: --size)")
    gen.add_argument("--guidance", type=float, default=2.5, help="guidance scale (guidance-distilled models)")
    gen.add_argument("--batch-size", type=positive_int, default=4, help="items per generation call")
    gen.add_argument("--seed", type=int, default=0, help="base seed; each item derives its own from it and its key")
    gen.add_argument("--device", type=_device, default="auto", help="auto (cuda if available), cpu, cuda:1 ...")
    gen.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                     help="auto = bfloat16 on GPU, float32 on CPU")
    gen.add_argument("--cpu-threads", type=int, default=None,
                     help="torch threads on the CPU (1 is fastest for tiny models on a busy machine)")
    gen.set_defaults(func=cmd_generate)

    score = sub.add_parser("score", help="score results through the reward service; tables and radar plot")
    common(score)
    score.add_argument("--results", required=True, help="results JSON (from `psr bench generate`) or folder")
    add_server_argument(score)
    add_api_key_refusal(score)
    score.add_argument("--config", default=None, help="YAML: which reward computes each dimension, batching")
    score.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting, e.g. rewards.aesthetics=pickscore (repeatable)")
    score.add_argument("--label", default=None, help="name of this result set in tables and plots")
    score.add_argument("--compare", nargs="+", default=[], metavar="SUMMARY",
                       help="summary.json files (or output folders) of other runs to plot beside this one")
    score.add_argument("--retry-failed", action="store_true", help="score items that failed before again")
    score.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    score.set_defaults(func=cmd_score)

    syn = sub.add_parser("make-synthetic", help="write a tiny synthetic PSRBench set (with results) for trying")
    syn.add_argument("dir", help="output folder")
    syn.add_argument("--items", type=positive_int, default=2, help="items per subset")
    syn.add_argument("--size", type=int, default=64, help="image side")
    syn.add_argument("--seed", type=int, default=0, help="seed of the synthetic images")
    syn.set_defaults(func=cmd_make_synthetic)


def _device(value: str) -> str:
    """argparse type of ``--device`` (torch is imported only when the option is given)."""
    from reward_server.models.device import device_name

    return device_name(value)


def image_side(value: str) -> int:
    """argparse type: a positive multiple of 16 (the generator's VAE x patch size)."""
    number = positive_int(value)
    if number % 16:
        lower, upper = number // 16 * 16, (number // 16 + 1) * 16
        closest = f"{lower} or {upper}" if lower else f"{upper}"
        raise argparse.ArgumentTypeError(f"{value} is not a multiple of 16; use {closest}")
    return number


def _progress(total: int, disable: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=disable, file=sys.stderr, dynamic_ncols=True)


def _load_items(args: argparse.Namespace):
    from trainer.evaluation.dataset import load_bench

    subsets = args.subsets.split(",") if args.subsets else None
    return load_bench(args.data, subsets)


def _clear(out: Path, names: list[str]) -> None:
    for name in names:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def cmd_generate(args: argparse.Namespace) -> int:
    from trainer.evaluation.generate import RESULTS_NAME, lazy, run_generation
    from trainer.evaluation.model import load_generate_fn

    items = _load_items(args)
    out = Path(args.out)
    if args.restart:
        _clear(out, [RESULTS_NAME, "images"])
    if args.cpu_threads:
        import torch

        torch.set_num_threads(args.cpu_threads)
    generate = lazy(lambda: load_generate_fn(args.model, lora=args.lora, device=args.device, dtype=args.dtype,
                                             steps=args.steps, size=args.size, ref_size=args.ref_size,
                                             guidance=args.guidance, lora_alpha=args.lora_alpha))
    meta = {"model": args.model, "lora": args.lora, "lora_alpha": args.lora_alpha, "steps": args.steps,
            "size": args.size, "ref_size": args.ref_size, "guidance": args.guidance}
    with _progress(len(items), args.no_progress, "generate") as bar:
        path = run_generation(items, Path(args.data), generate, out, args.batch_size, args.seed, meta, bar.update)
    print(f"wrote {path} ({len(items)} items)")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    import httpx

    from shared.client import RewardClient, RewardServiceError
    from shared.config import load_config
    from trainer.evaluation.radar import plot_radar
    from trainer.evaluation.report import load_summary, markdown_table, summarize, write_reports
    from trainer.evaluation.results import load_result_paths, results_label, results_meta
    from trainer.evaluation.scoring import (
        BenchAborted,
        BenchConfig,
        BenchScorer,
        ScoreStore,
        check_run,
        wait_for_rewards,
    )

    config = load_config(BenchConfig, args.config, args.set)
    compare = [load_summary(p) for p in args.compare]  # fail before any scoring if one is unreadable
    items = _load_items(args)
    root = Path(args.data)
    result_paths = load_result_paths(args.results, items)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.restart:
        _clear(out, ["scores.jsonl", "run.json"])
    check_run(out, {"data": str(root.resolve()), "results": str(Path(args.results).resolve()),
                    "rewards": config.rewards.model_dump(),
                    "generation": results_meta(args.results)})  # regenerated images (other LoRA...) != old scores
    store = ScoreStore(out / "scores.jsonl")
    label = args.label or results_label(args.results)
    with RewardClient(args.server, timeout=args.timeout,
                      image_format=config.image_format, batch_size=config.batch_size) as client:
        try:
            wait_for_rewards(client, config.reward_names(it.subset for it in items), config.ready_timeout_s,
                             config.connect_timeout_s)
        except (BenchAborted, RewardServiceError, httpx.TransportError) as exc:
            print(f"psr bench score: reward service {args.server}: {exc}", file=sys.stderr)
            return 1
        with _progress(len(items), args.no_progress, "score") as bar:
            scorer = BenchScorer(client, config, root, result_paths, store, bar.update)
            todo = scorer.pending(items, args.retry_failed)
            bar.update(len(items) - len(todo))
            try:
                scorer.run(todo)
            except BenchAborted as exc:
                done = sum(it.key in store.records for it in items)
                print(f"psr bench score: {exc}\n{done} of {len(items)} items are scored in {store.path}; "
                      "run the same command again to resume", file=sys.stderr)
                return 1
    summary = summarize([store.records[it.key] for it in items], label)
    paths = write_reports(summary, out)
    radar = plot_radar([summary, *compare], out / "radar.png")
    print(markdown_table(summary))
    failed = sum(1 for it in items if store.records[it.key]["errors"])
    if failed:
        print(f"\n{failed} item(s) have failed dimensions (reasons in {paths['markdown']})")
    print(f"\nscores: {store.path}\ntables: {paths['markdown']}, {paths['csv']}\nradar: {radar}")
    return 0


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from trainer.evaluation.synthetic import make_synthetic_bench

    root = make_synthetic_bench(args.dir, args.items, args.size, args.seed)
    print(f"wrote a synthetic PSRBench set to {root} (results: {root / 'results' / 'results.json'})")
    return 0
