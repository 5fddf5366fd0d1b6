"""Tiny DINO v1 (``ViTModel``) and DINOv2 (``Dinov2Model``) image backbones.

Writes ``ROOT/dino`` and ``ROOT/dinov2``; other rewards (e.g. subject consistency) may point
at the same folders.
"""

from __future__ import annotations

from pathlib import Path

DINO_DIR = "dino"
DINOV2_DIR = "dinov2"

_LAYERS = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


def write_dino(path: Path, image_size: int = 32, initializer_range: float = 0.02) -> None:
    """A tiny DINO v1-style ViT (CLS token, no pooler), as ``facebook/dino-vits16`` is stored.

    With the default init its CLS embedding hardly depends on the image (every pair of images has a
    cosine near 0.95); ``initializer_range=0.2`` makes it respond to content, for learning tests."""
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(**_LAYERS, image_size=image_size, patch_size=8, initializer_range=initializer_range)
    ViTModel(config, add_pooling_layer=False).eval().save_pretrained(path)


def write_dinov2(path: Path, image_size: int = 32) -> None:
    """A tiny ``Dinov2Model``."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(**_LAYERS, image_size=image_size, patch_size=8)
    Dinov2Model(config).eval().save_pretrained(path)


def write(root: Path) -> dict[str, dict]:
    write_dino(root / DINO_DIR)
    write_dinov2(root / DINOV2_DIR)
    return {
        "dino_i": {
            "type": "image_similarity",
            "model": str(root / DINO_DIR),
            "device": "cpu",
            "max_batch_size": 16,
            "max_wait_ms": 2,
            "options": {"backbone": "dino"},
        },
    }
