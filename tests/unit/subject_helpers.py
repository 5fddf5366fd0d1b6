"""Shared pieces of the subject/position tests: a tiny DINO checkpoint and synthetic scenes.

Scenes paste distinct textured patches onto a grey canvas at known boxes; a reference that is
the very patch pasted gives a crop identical to it, so its embedding matches exactly (cosine 1)
and every other pairing is measurably lower -- known embeddings through the real embedder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reward_server.config import RewardSpec
from shared.protocol import Sample, Subject

PATCH = 32


def write_tiny_dino(path: Path) -> str:
    """A random 2-layer DINO-v1-style ViT (32 px, patch 8) saved with save_pretrained."""
    import torch
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=PATCH, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(path)
    return str(path)


def patch(seed: int) -> np.ndarray:
    """A distinct textured (PATCH, PATCH, 3) uint8 patch: a colour, stripes and noise per seed."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    stripes = (np.arange(PATCH)[:, None] // (2 + seed % 5) % 2) * rng.integers(40, 120)
    noise = rng.integers(0, 60, size=(PATCH, PATCH, 3))
    return np.clip(base + stripes[..., None] + noise, 0, 255).astype(np.uint8)


def scene(placements: list[tuple[np.ndarray, tuple[int, int]]], size: int = 160) -> tuple[np.ndarray, list[list[float]]]:
    """Paste patches at (x, y) top-left corners; returns the image and the pixel boxes."""
    image = np.full((size, size, 3), 128, dtype=np.uint8)
    boxes = []
    for piece, (x, y) in placements:
        image[y : y + PATCH, x : x + PATCH] = piece
        boxes.append([float(x), float(y), float(x + PATCH), float(y + PATCH)])
    return image, boxes


def sample(image: np.ndarray, subjects: list[tuple[str, np.ndarray]], boxes: dict, **metadata) -> Sample:
    return Sample(
        image=image,
        prompt="test",
        subjects=tuple(Subject(category=c, reference=r) for c, r in subjects),
        metadata={"boxes": boxes, **metadata},
    )


def subject_spec(model: str, **options) -> RewardSpec:
    opts = {"detector": {"kind": "fixed"}, "reference_crop": "none", **options}
    return RewardSpec(type="subject_consistency", model=model, device="cpu", options=opts)
