"""How much of the trainer's wall time goes to waiting for rewards: overlapped vs. blocking calls.

The tiny generator trains against a real reward server (uvicorn over HTTP, in this process's
background thread) that hosts ``brightness`` plus a ``fixed_cost`` reward with a set latency
per request. The latency defaults to half the time one sampling batch takes to generate
(measured first), i.e. a reward service that keeps up. Both modes run the same steps:

* blocking: each sampling batch is scored (``client.score``) before the next is sampled;
* overlapped: each batch is submitted (``client.submit``) and the next sampled at once; the
  update trains on a batch as soon as its rewards are in.

    python -m bench.overlap [--steps 4] [--batches 4] [--latency-fraction 0.5] [--latency SECONDS]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

from reward_server.app import create_app
from reward_server.config import ServerConfig
from reward_server.serving import BackgroundServer
from shared.client import RewardClient
from trainer.config import tiny_run_config
from trainer.tiny import make_tiny_generator
from trainer.train import FlowGRPOTrainer


def serve(latency: float, batch_images: int) -> tuple[BackgroundServer, str]:
    """A reward server whose ``latency`` reward takes ``latency`` s per request (one batch each)."""
    config = ServerConfig(
        rewards={
            "brightness": {"type": "brightness", "max_batch_size": batch_images, "max_wait_ms": 0},
            "latency": {
                "type": "fixed_cost",
                "max_batch_size": batch_images,
                "max_wait_ms": 0,
                "options": {"seconds_per_batch": latency},
            },
        }
    )
    server = BackgroundServer(create_app(config))
    url = server.start()
    with RewardClient(url) as client:
        client.wait_until_ready(60)
    return server, url


def make_trainer(tiny: Path, out: Path, url: str, steps: int, batches: int, overlap: bool) -> FlowGRPOTrainer:
    cfg = tiny_run_config(
        tiny,
        url,
        out,
        [
            f"run.steps={steps}",
            f"sampling.batches_per_step={batches}",
            "sampling.prompts_per_batch=1",
            "rewards.reward_weights={brightness: 1.0, latency: 0.0}",
            f"rewards.overlap={str(overlap).lower()}",
            f"run.save_every={steps}",
            "run.image_every=1000",
        ],
    )
    return FlowGRPOTrainer(cfg)


def interleaved(trainers: dict[str, FlowGRPOTrainer], steps: int) -> dict[str, dict[str, float]]:
    """Run the modes' steps alternately (so machine load hits both alike); step 1 is warm-up."""
    keys = ("rollout_s", "reward_wait_s", "update_s", "step_s")
    totals = {mode: dict.fromkeys(keys, 0.0) for mode in trainers}
    for step in range(1, steps + 2):
        for mode, trainer in trainers.items():
            metrics = trainer.train_step(step)
            if step > 1:
                for k in keys:
                    totals[mode][k] += metrics.get(f"time/{k}", 0.0)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=4, help="measured steps per mode (after one warm-up step)"
    )
    parser.add_argument("--batches", type=int, default=4, help="sampling batches per step")
    parser.add_argument(
        "--latency-fraction",
        type=float,
        default=0.5,
        help="reward latency per request as a fraction of one batch's sampling time",
    )
    parser.add_argument("--latency", type=float, default=None, help="reward latency in seconds (overrides)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = make_tiny_generator(tmp / "generator")
        batch_images = tiny_run_config(tiny, None, tmp / "probe").sampling.group_size
        latency = args.latency
        if latency is None:
            server, url = serve(0.0, batch_images)
            calib = interleaved({"calibration": make_trainer(tiny, tmp / "c", url, 3, args.batches, True)}, 2)
            server.stop()
            per_batch = calib["calibration"]["rollout_s"] / (2 * args.batches)
            latency = args.latency_fraction * per_batch
            print(
                f"one sampling batch ({batch_images} images) takes {per_batch:.3f} s; "
                f"reward latency set to {latency:.3f} s per request"
            )
        server, url = serve(latency, batch_images)
        try:
            trainers = {
                mode: make_trainer(tiny, tmp / mode, url, args.steps + 1, args.batches, mode == "overlapped")
                for mode in ("blocking", "overlapped")
            }
            results = interleaved(trainers, args.steps)
        finally:
            server.stop()
    print(f"\n{args.steps} steps x {args.batches} sampling batches, reward latency {latency:.3f} s per batch")
    print(f"{'mode':<11} {'step s':>8} {'rollout':>8} {'waiting':>8} {'update':>8}   wait fraction")
    for mode, t in results.items():
        step = t["step_s"] / args.steps
        print(
            f"{mode:<11} {step:8.3f} {t['rollout_s'] / args.steps:8.3f} {t['reward_wait_s'] / args.steps:8.3f} "
            f"{t['update_s'] / args.steps:8.3f}   {t['reward_wait_s'] / t['step_s']:.1%}"
        )
    b, o = results["blocking"], results["overlapped"]
    wait_b, wait_o = b["reward_wait_s"] / b["step_s"], o["reward_wait_s"] / o["step_s"]
    print(
        f"\nwaiting fraction blocking / overlapped: {wait_b:.1%} / {wait_o:.1%} "
        f"(ratio {wait_b / max(wait_o, 1e-9):.1f}x); step time blocking / overlapped: "
        f"{b['step_s'] / o['step_s']:.2f}x"
    )
    if not np.isfinite(wait_o) or wait_o >= 0.05:
        print("note: overlapped waiting is above the 5% goal for this setting")


if __name__ == "__main__":
    main()
