"""Cost of the subject-consistency reward per stage (detect, crop, embed, assign) by batch size.

Each batch holds ``--subjects`` subjects per sample with references of one size (so references
batch together in the detector); ``--group`` samples share one set of references, as a GRPO
group does. The reward records the wall time of each stage of its last ``score`` call
(``reward.last_timings``); the table shows the median over ``--repeats`` calls after a warm-up:
stages with the reference cache emptied before each call (every reference detected and
embedded), and the total when the references are already cached (``warm``), with their ratio.

    python -m bench.subject_stages                       # tiny models from `psr make-tiny`
    python -m bench.subject_stages --config rewards.yaml --reward subject --image 512 --device cuda

Figures from tiny random models on a CPU show how the stages scale, not real-model costs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

from reward_server.config import ServerConfig
from reward_server.models.quiet import quiet_model_libraries
from reward_server.registry import build_rewards, load_rewards
from shared.config import load_config
from shared.protocol import Sample, Subject
from shared.table import format_table

STAGES = ("detect", "crop", "embed", "assign")
CATEGORIES = ("dog", "cat", "cup", "hat")


def make_samples(n: int, image: int, reference: int, subjects: int, group: int = 1, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out: list[Sample] = []
    for i in range(n):
        if i % group == 0:
            refs = tuple(
                Subject(CATEGORIES[j % len(CATEGORIES)], rng.integers(0, 256, (reference, reference, 3), dtype=np.uint8))
                for j in range(subjects)
            )
        image_i = rng.integers(0, 256, (image, image, 3), dtype=np.uint8)
        out.append(Sample(image=image_i, prompt="a dog and a cat on a sofa", subjects=refs))
    return out


def measure(reward, samples: list[Sample], repeats: int) -> tuple[dict[str, float], float]:
    """Median seconds per stage with an empty reference cache, and the median total with a warm one."""
    reward.score(samples)
    cold, warm = [], []
    for _ in range(repeats):
        reward.cache.clear()
        reward.score(samples)
        cold.append(dict(reward.last_timings))
        reward.score(samples)
        warm.append(sum(reward.last_timings.values()))
    return {stage: statistics.median(r[stage] for r in cold) for stage in STAGES}, statistics.median(warm)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="rewards.yaml (default: tiny models written to a temp folder)")
    parser.add_argument("--reward", default="subject", help="a subject_consistency entry of the config")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64", help="comma-separated batch sizes")
    parser.add_argument("--image", type=int, default=64, help="generated image side in pixels")
    parser.add_argument("--reference", type=int, default=48, help="reference image side in pixels")
    parser.add_argument("--subjects", type=int, default=2, help="subjects per sample")
    parser.add_argument("--group", type=int, default=1, help="samples sharing one set of references")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", help="override the reward's device (e.g. cuda)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (fewer = steadier figures on a shared CPU)")
    args = parser.parse_args(argv)
    quiet_model_libraries()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        if args.config:
            config_path = Path(args.config)
        else:
            from reward_server.tiny import make_tiny

            config_path = make_tiny(tmp)
        config = load_config(ServerConfig, config_path)
        if args.device:
            config.rewards[args.reward] = config.rewards[args.reward].model_copy(update={"device": args.device})
        reward = build_rewards(config, only=[args.reward])[args.reward]
        if reward.type_name != "subject_consistency":
            raise SystemExit(f"{args.reward!r} is a {reward.type_name} reward, not subject_consistency")
        load_rewards({args.reward: reward})
        rows = []
        for batch in (int(b) for b in args.batches.split(",")):
            samples = make_samples(batch, args.image, args.reference, args.subjects, args.group)
            t, warm = measure(reward, samples, args.repeats)
            total = sum(t.values())
            rows.append(
                [batch, *(1e3 * t[s] for s in STAGES), 1e3 * total, 1e3 * total / batch, batch / total,
                 *(100 * t[s] / total for s in STAGES), 1e3 * warm, total / warm]
            )
    print(
        f"subject_consistency stages: reward {args.reward!r}, device {reward.spec.device}, "
        f"{args.image}px images, {args.subjects} subjects x {args.reference}px references, groups of {args.group}, "
        f"median of {args.repeats}"
    )
    headers = [
        "batch", *(f"{s} ms" for s in STAGES), "total ms", "ms/image", "images/s", *(f"{s} %" for s in STAGES),
        "warm ms", "cold/warm",
    ]
    print(format_table(headers, rows))


if __name__ == "__main__":
    main()
