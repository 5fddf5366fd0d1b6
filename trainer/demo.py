"""``psr demo``: the main job on the embedded default -- tiny models, the in-process reward
server, no GPU, no Redis, no downloads."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from shared.table import format_table


def demo_images(
    seed: int = 0, size: int = 64
) -> tuple[list[np.ndarray], list[str], list[list[tuple[str, np.ndarray]]]]:
    """A handful of synthetic 'generated' images, prompts and subject references."""
    rng = np.random.default_rng(seed)
    dog = np.zeros((size, size, 3), np.uint8)
    dog[16:48, 16:48] = (180, 120, 60)
    hat = np.zeros((size, size, 3), np.uint8)
    hat[8:24, 20:44] = (200, 30, 30)
    images, prompts, subjects = [], [], []
    for i in range(6):
        canvas = rng.integers(0, 60, (size, size, 3), dtype=np.uint8) + np.uint8(30 * i)
        canvas[20:52, 10:42] = dog[16:48, 16:48]
        if i % 2 == 0:
            canvas[4:20, 14:38] = hat[8:24, 20:44]
        images.append(canvas)
        prompts.append("a dog wearing a red hat on a sofa" if i % 2 == 0 else "a dog on a sofa")
        subjects.append([("dog", dog), ("hat", hat)])
    return images, prompts, subjects


def run_demo(workdir: Path, steps: int | None = None) -> int:
    """Make tiny models, start the reward server in-process and score a handful of images."""
    from reward_server.app import create_app
    from reward_server.config import ServerConfig
    from reward_server.models.quiet import quiet_model_libraries
    from reward_server.serving import BackgroundServer
    from reward_server.tiny import make_tiny
    from shared.client import RewardClient
    from shared.config import load_config

    quiet_model_libraries()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"[1/3] writing tiny models to {workdir / 'models'}")
    config_path = make_tiny(workdir / "models")
    config = load_config(ServerConfig, config_path)
    app = create_app(config)
    with BackgroundServer(app) as url:
        print(f"[2/3] reward server on {url} hosting: {', '.join(config.rewards)}")
        with RewardClient(url) as client:
            deadline = time.monotonic() + 120
            while not all(r["ready"] for r in client.rewards()):
                if time.monotonic() > deadline:
                    raise RuntimeError("the reward models did not load within 120 s")
                time.sleep(0.05)
            images, prompts, subjects = demo_images()
            weights = {name: 1.0 for name in config.rewards}
            res = client.score(images, weights, prompts=prompts, subjects=subjects)
    print("[3/3] scores of the demo images:")
    names = list(res.scores)
    rows = [[i, prompts[i], *(float(res.scores[n][i]) for n in names)] for i in range(len(images))]
    print(format_table(["#", "prompt", *names], rows))
    for err in res.errors:
        print(f"! sample {err['sample']}: {err['reward']}: {err['message']}")
    return 0
