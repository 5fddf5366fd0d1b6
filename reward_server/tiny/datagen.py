"""The tiny causal LM, tiny text-to-image pipeline and ``datagen.yaml`` of ``psr datagen`` (no rewards).

Skipped, with a note in the log, where the trainer's dependencies (diffusers) are not installed.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def write(root: Path) -> dict[str, dict]:
    try:
        from trainer.datagen.tiny import write_tiny_datagen
    except ImportError as exc:
        log.warning("not writing the tiny datagen models (trainer dependencies missing: %s)", exc)
        return {}
    write_tiny_datagen(root)
    return {}
