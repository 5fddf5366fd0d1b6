"""Rollouts: prompt items, groups of SDE samples, and sending them to the reward service."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.config import DataConfig, TrainConfig
from trainer.dataset import GRPO_RULES, load_dataset, load_image
from trainer.pipeline import Conditioning, MultiRefGenerator, to_uint8_images
from trainer.sampling import Trajectory, sample_sde


@dataclass
class Item:
    """A training prompt with its reference images (decoded, or ``ReferenceFiles`` read when drawn)."""

    prompt: str
    references: Sequence[np.ndarray]
    categories: list[str]

    def decoded(self) -> Item:
        """The item with its references in memory (each file read once per sampling batch)."""
        return Item(self.prompt, list(self.references), self.categories)


class ReferenceFiles(Sequence[np.ndarray]):
    """A dataset item's reference images, read from disk on access: a dataset's references are not all
    held in memory (psr datagen's paper-scale output would need hundreds of GB), only a batch's."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int | slice) -> np.ndarray | list[np.ndarray]:  # type: ignore[override]
        if isinstance(i, slice):
            return [load_image(p) for p in self.paths[i]]
        return load_image(self.paths[i])


def _load_reference(spec: str, base: Path) -> np.ndarray:
    if spec.startswith("solid:"):
        rgb = [int(c) for c in spec[len("solid:") :].split(",")]
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise ValueError(f"bad reference {spec!r}: use solid:R,G,B with values 0-255")
        return np.full((64, 64, 3), rgb, dtype=np.uint8)
    path = Path(spec) if Path(spec).is_absolute() else base / spec
    if not path.is_file():
        raise FileNotFoundError(f"reference image {path} does not exist")
    return load_image(path)


def load_items(data: DataConfig, base_dir: Path = Path(".")) -> list[Item]:
    """Inline prompt items plus those of a dataset file or folder (``trainer.dataset``'s format).

    Relative paths of inline references and of ``data.file`` start at ``base_dir`` (the
    config's folder); the dataset's own paths start at its folder."""
    items = [
        Item(p.prompt, [_load_reference(r, base_dir) for r in p.references], list(p.categories))
        for p in data.prompts
    ]
    if data.file:
        path = Path(data.file) if Path(data.file).is_absolute() else base_dir / data.file
        root, entries = load_dataset(path, GRPO_RULES)
        items += [Item(e.instruction, ReferenceFiles([root / r for r in e.input_paths]), e.categories) for e in entries]
    if not items:
        raise ValueError("the data section yields no prompt items")
    return items


@dataclass
class Rollout:
    """One sampling batch (all samples share one reference layout) and what scoring needs."""

    cond: Conditioning  # on the CPU
    negative: Conditioning | None
    trajectory: Trajectory
    group_ids: np.ndarray
    images: list[np.ndarray]
    items: list[Item]  # per sample

    def __len__(self) -> int:
        return len(self.images)


def sample_group_batch(
    gen: MultiRefGenerator,
    transformer: torch.nn.Module,
    items: list[Item],
    cfg: TrainConfig,
    first_group: int,
    seed: int,
) -> list[Rollout]:
    """Sample ``group_size`` images per item, split into batches of equal reference count."""
    by_layout: dict[int, list[tuple[int, Item]]] = {}
    for g, item in enumerate(items):
        by_layout.setdefault(len(item.references), []).append((first_group + g, item))
    out = []
    for sub, members in enumerate(by_layout.values()):
        out.append(_sample_layout(gen, transformer, members, cfg, seed * 1009 + sub))
    return out


def _sample_layout(gen, transformer, members, cfg: TrainConfig, seed: int) -> Rollout:
    s, m = cfg.sampling, cfg.model
    members = [(gid, item.decoded()) for gid, item in members]
    per_sample = [(gid, item) for gid, item in members for _ in range(s.group_size)]
    items = [item for _, item in per_sample]
    unique = [item for _, item in members]
    # Encode each prompt and its references once, then repeat them for the group.
    repeat = torch.arange(len(unique)).repeat_interleave(s.group_size)
    cond = gen.condition(
        [it.prompt for it in unique],
        [it.references for it in unique],
        m.resolution,
        m.resolution,
        m.reference_size,
    ).index(repeat)
    negative = None
    if s.cfg_scale > 1.0:
        negative = gen.condition(
            [s.negative_prompt] * len(unique),
            [it.references for it in unique],
            m.resolution,
            m.resolution,
            m.reference_size,
        ).index(repeat)
    generator = torch.Generator().manual_seed(seed)
    noise = gen.initial_noise(len(items), m.resolution, m.resolution, generator)
    sigmas = gen.sigmas(s.num_steps, m.resolution, m.resolution)

    def velocity(x, sigma):
        return gen.velocity(
            transformer, x.to(cond.prompt_embeds.dtype), sigma, cond, m.guidance_scale, negative, s.cfg_scale
        ).float()

    traj = sample_sde(velocity, noise, sigmas, s.noise_level, generator)
    images = to_uint8_images(gen.decode(traj.final.to(gen.device), m.resolution, m.resolution))
    return Rollout(
        cond.to("cpu"),
        None if negative is None else negative.to("cpu"),
        traj,
        np.array([gid for gid, _ in per_sample]),
        images,
        items,
    )


def submit_scores(client: Any, rollout: Rollout, cfg: TrainConfig) -> Future:
    """Send a rollout for scoring; returns a Future of the client's ``Scores``.

    With ``rewards.overlap`` false the call blocks (the comparison point of bench/overlap.py).
    """
    r = cfg.rewards
    kwargs: dict[str, Any] = {
        "rewards": dict(r.reward_weights),
        "prompts": [it.prompt for it in rollout.items],
    }
    if r.send_subjects and any(it.categories for it in rollout.items):
        # an item without categories sends no subjects: a subject reward fails (masked) on it, no crash
        kwargs["subjects"] = [
            list(zip(it.categories, it.references, strict=True)) if it.categories else [] for it in rollout.items
        ]
    if r.overlap:
        return client.submit(rollout.images, **kwargs)
    fut: Future = Future()
    try:
        fut.set_result(client.score(rollout.images, **kwargs))
    except Exception as exc:
        fut.set_exception(exc)
    return fut
