"""``psr demo``: the main job on the embedded default -- tiny models, the in-process reward
server, a short Flow-GRPO run on the CPU. No GPU, no Redis, no downloads."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from shared.client import RewardClient
from shared.table import format_table

# The PSR reward families, shown on example images after training.
SHOWCASE_REWARDS = ("subject", "judge", "position", "hpsv2", "clip_t", "aesthetic", "dino_i")


def demo_images(seed: int = 0, size: int = 64) -> tuple[list[np.ndarray], list[str], list[list[tuple[str, np.ndarray]]]]:
    """A handful of synthetic 'generated' images, prompts and subject references."""
    rng = np.random.default_rng(seed)
    dog = np.zeros((size, size, 3), np.uint8)
    dog[16:48, 16:48] = (180, 120, 60)
    hat = np.zeros((size, size, 3), np.uint8)
    hat[8:24, 20:44] = (200, 30, 30)
    images, prompts, subjects = [], [], []
    for i in range(4):
        canvas = rng.integers(0, 60, (size, size, 3), dtype=np.uint8) + np.uint8(30 * i)
        canvas[20:52, 4:36] = dog[16:48, 16:48]
        if i % 2 == 0:
            canvas[24:40, 38:62] = hat[8:24, 20:44]
        images.append(canvas)
        prompts.append("a dog to the left of a red hat" if i % 2 == 0 else "a dog next to a red hat")
        subjects.append([("dog", dog), ("hat", hat)])
    return images, prompts, subjects


def print_training(summary: dict) -> None:
    rows = [[s, r, w] for s, r, w in zip(summary["steps"], summary["reward_mean"],
                                        summary["reward_wait_fraction"], strict=True)]
    print(format_table(["step", "mean reward", "reward wait"], rows))
    first, last = summary["reward_mean"][0], summary["reward_mean"][-1]
    print(f"mean reward {first:.4f} -> {last:.4f} ({last - first:+.4f})")
    print(f"TensorBoard logs: {summary['tensorboard_dir']}")
    print(f"sample grid:      {summary['sample_grid']}")
    print(f"checkpoint:       {summary['checkpoint']}")


def showcase(client: RewardClient, hosted: list[str]) -> None:
    names = [n for n in SHOWCASE_REWARDS if n in hosted]
    images, prompts, subjects = demo_images()
    res = client.score(images, {n: 1.0 for n in names}, prompts=prompts, subjects=subjects)
    rows = [[i, prompts[i], *(float(res.scores[n][i]) for n in names)] for i in range(len(images))]
    print(format_table(["#", "prompt", *names], rows))
    for err in res.errors:
        print(f"! sample {err['sample']}: {err['reward']}: {err['message']}")


def run_demo(workdir: Path, steps: int | None = None) -> int:
    """Make tiny models, serve their rewards in-process, train the tiny generator, show the rewards."""
    from reward_server.app import create_app
    from reward_server.config import ServerConfig
    from reward_server.models.quiet import quiet_model_libraries
    from reward_server.serving import BackgroundServer
    from reward_server.tiny import make_tiny
    from shared.config import load_config
    from trainer.config import tiny_run_config
    from trainer.train import run_training

    quiet_model_libraries()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"[1/4] writing tiny models to {workdir / 'models'}", flush=True)
    config_path = make_tiny(workdir / "models")
    config = load_config(ServerConfig, config_path)
    with BackgroundServer(create_app(config)) as url, RewardClient(url) as client:
        print(f"[2/4] reward server on {url} hosting: {', '.join(config.rewards)}", flush=True)
        client.wait_until_ready()
        print("[3/4] Flow-GRPO on the tiny generator, rewarded for brightness by the server", flush=True)
        overrides = [f"run.steps={steps}"] if steps else []
        previous = [workdir / "run" / part for part in ("checkpoints", "tensorboard", "samples")]
        if any(p.exists() for p in previous):  # what an earlier demo's run wrote: a new demo replaces it
            print(f"      replacing the previous demo run in {workdir / 'run'}", flush=True)
            for part in previous:
                shutil.rmtree(part, ignore_errors=True)
        run = tiny_run_config(workdir / "models" / "generator", url, workdir / "run", overrides)
        summary = run_training(run, progress=True)
        print_training(summary)
        print("[4/4] the PSR reward families on example images", flush=True)
        showcase(client, list(config.rewards))
    return 0
