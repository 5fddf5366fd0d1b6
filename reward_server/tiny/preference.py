"""Tiny preference models: PickScore on the tiny CLIP of ``tiny/clip.py``, and a tiny HPSv2.

The HPS stand-in is an open_clip architecture registered from ``ROOT/open_clip/psr-tiny-hps.json``
(``open_clip.add_model_config``) and its random state dict saved as HPSv2 ships it
(``{"state_dict": ...}`` in a torch file).
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_HPS = "psr-tiny-hps"
TINY_HPS_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_hps(root: Path) -> tuple[Path, Path]:
    """Write the tiny open_clip config folder and an HPS-style state dict; returns (config dir, file)."""
    import open_clip
    import torch

    config_dir = root / "open_clip"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / f"{TINY_HPS}.json").write_text(json.dumps(TINY_HPS_CONFIG, indent=2))
    open_clip.add_model_config(config_dir)
    model = open_clip.create_model(TINY_HPS, pretrained=None)
    path = root / "hps_tiny.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return config_dir, path


def write(root: Path) -> dict[str, dict]:
    from reward_server.tiny.clip import CLIP_DIR

    config_dir, hps = write_hps(root)
    common = {"device": "cpu", "max_batch_size": 16, "max_wait_ms": 2}
    return {
        "pickscore": {"type": "pickscore", "model": str(root / CLIP_DIR), **common},
        "hpsv2": {
            "type": "hpsv2",
            "model": str(hps),
            **common,
            "options": {"architecture": TINY_HPS, "model_config_dir": str(config_dir)},
        },
    }
