"""``psr serve``, ``psr score``, ``psr make-tiny`` and ``psr demo``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from shared.cli_args import add_api_key_refusal, add_server_argument, port_number, positive_int, redis_url


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run the reward server (FastAPI)")
    serve.add_argument("--config", required=True, help="rewards.yaml (see `psr make-tiny` for an example)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=port_number, default=8000, help="TCP port to listen on")
    serve.add_argument("--rewards", default=None, help="comma list: host only these rewards of the config")
    serve.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. rewards.clip_t.device=cuda:0 (repeatable)")
    serve.add_argument("--redis", type=redis_url, default=os.environ.get("PSR_REDIS_URL"), metavar="URL",
                       help="score on `psr worker` processes through this Redis (redis:// or rediss://) "
                       "instead of in-process (default: $PSR_REDIS_URL)")
    serve.add_argument("--check", action="store_true",
                       help="validate the config, local model paths, devices and API keys without loading weights; "
                       "exit 0 when all is well")
    serve.set_defaults(func=cmd_serve)

    score = subparsers.add_parser("score", help="score local image files against a running server")
    score.add_argument("images", nargs="+", help="image files (PNG/JPEG)")
    add_server_argument(score)
    score.add_argument("--reward", "-r", action="append", required=True, metavar="NAME[=WEIGHT]",
                       help="reward to compute, with an optional weight (repeatable or comma list)")
    score.add_argument("--prompt", "-p", default="", help="the prompt every image was generated from")
    score.add_argument("--subject", "-s", action="append", default=[], metavar="CATEGORY=REFERENCE",
                       help="a subject and its reference image file (repeatable)")
    add_api_key_refusal(score)
    score.add_argument("--format", choices=["raw", "png", "jpeg"], default="png", help="how images travel")
    score.add_argument("--json", action="store_true", help="print the raw answer as JSON")
    score.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the answer")
    score.set_defaults(func=cmd_score)

    tiny = subparsers.add_parser("make-tiny", help="write tiny random models and a rewards.yaml for tests/demo")
    tiny.add_argument("dir", help="output folder")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    tiny.set_defaults(func=cmd_make_tiny)

    demo = subparsers.add_parser("demo", help="the main job on tiny models: no GPU, no Redis, no downloads")
    demo.add_argument("--workdir", default="psr-demo", help="where models, logs and images go")
    demo.add_argument("--steps", type=positive_int, default=None, help="RL steps (default: the tiny config's; recipe: 3)")
    demo.add_argument("--recipe", action="store_true",
                      help="the whole recipe instead: data -> SFT -> GRPO from the SFT LoRA -> export -> PSRBench")
    demo.add_argument("--sft-steps", type=positive_int, default=20, help="SFT steps of --recipe (default: %(default)s)")
    demo.add_argument("--items", type=positive_int, default=16,
                      help="--recipe: items psr datagen makes (default: %(default)s)")
    demo.set_defaults(func=cmd_demo)


def parse_weights(specs: list[str]) -> dict[str, float]:
    """``["clip_t=1", "aesthetic=0.5,dino_i"]`` -> ``{"clip_t": 1.0, "aesthetic": 0.5, "dino_i": 1.0}``."""
    weights: dict[str, float] = {}
    for spec in specs:
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, _, weight = item.partition("=")
            try:
                weights[name] = float(weight) if weight else 1.0
            except ValueError:
                raise SystemExit(f"psr: bad reward weight in {item!r}; use NAME=NUMBER") from None
    return weights


def cmd_serve(args: argparse.Namespace) -> int:
    from reward_server.app import create_app
    from reward_server.auth import load_api_keys
    from reward_server.config import ServerConfig
    from reward_server.front import install_front
    from reward_server.registry import build_rewards, check_report, check_rewards
    from reward_server.serving import make_server
    from shared.config import load_config

    config = load_config(ServerConfig, args.config, args.set)
    only = args.rewards.split(",") if args.rewards else None
    rewards = build_rewards(config, only)
    load_api_keys()  # a bad or placeholder key stops start-up here, not at the first request
    if not args.redis:  # models load in this process: missing paths and GPUs are reported now
        check_rewards(rewards)
    if args.check:
        print(check_report(args.config, rewards, "front: models load on the workers" if args.redis else None))
        return 0
    backend = None
    if args.redis:  # a front: models live on the workers
        from reward_server.queue.backend import RedisBackend

        backend = RedisBackend(args.redis, rewards, config.queue, config.request_timeout_s)
    app = create_app(config, rewards=rewards, backend=backend, load_models=backend is None)
    install_front(app)  # API keys, per-caller limits, /v1/jobs
    server = make_server(app, args.host, args.port)
    server.run()
    error = app.state.psr.load_error
    if error:
        print(f"psr serve: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from PIL import Image

    from shared.client import RewardClient, RewardServiceError
    from shared.table import format_table

    def load(path: str, what: str):
        try:
            return Image.open(path).convert("RGB")
        except OSError as exc:
            raise SystemExit(f"psr score: cannot read {what}: {exc}") from None

    rewards = parse_weights(args.reward)
    subjects = []
    for spec in args.subject:
        category, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"psr score: --subject {spec!r} must look like CATEGORY=REFERENCE_FILE")
        subjects.append((category, load(path, f"the reference image of subject {category!r} (--subject {spec})")))
    images = [load(p, f"image {p}") for p in args.images]
    with RewardClient(args.server, timeout=args.timeout, image_format=args.format) as client:
        try:
            res = client.score(
                images,
                rewards,
                prompts=[args.prompt] * len(images),
                subjects=[subjects] * len(images) if subjects else None,
            )
        except RewardServiceError as exc:
            print(f"psr score: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps({
            "scores": {k: [None if v != v else v for v in col.tolist()] for k, col in res.scores.items()},
            "total": [None if v != v else v for v in res.total.tolist()],
            "errors": res.errors, "details": res.details, "versions": res.versions,
        }, indent=2, default=str))
        return 0
    names = list(res.scores)
    rows = [[Path(p).name, *(float(res.scores[n][i]) for n in names), float(res.total[i])]
            for i, p in enumerate(args.images)]
    print(format_table(["image", *names, "total"], rows))
    for err in res.errors:
        print(f"! {args.images[err['sample']]}: {err['reward']}: {err['message']}")
    print("versions: " + ", ".join(f"{k}={v}" for k, v in res.versions.items()))
    return 0


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from reward_server.tiny import make_tiny

    path = make_tiny(args.dir, seed=args.seed)
    print(f"wrote tiny models under {args.dir}; config: {path}")
    print(f"serve them with: psr serve --config {path} --port 8000")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from trainer.demo import run_demo
    from trainer.recipe import run_recipe
    from trainer.run import TrainingInterrupted

    try:
        if args.recipe:
            return run_recipe(Path(args.workdir), args.sft_steps, args.steps or 3, args.items)
        return run_demo(Path(args.workdir), steps=args.steps)
    except TrainingInterrupted as exc:
        print(f"psr demo: {exc}", file=sys.stderr)
        return 130
