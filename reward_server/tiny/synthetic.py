"""Config entries for the model-free rewards (nothing to write)."""

from __future__ import annotations

from pathlib import Path


def write(root: Path) -> dict[str, dict]:
    return {
        "brightness": {"type": "brightness", "max_batch_size": 64, "max_wait_ms": 2},
        "red": {"type": "color", "options": {"target": [255, 0, 0]}, "max_batch_size": 64, "max_wait_ms": 2},
    }
