"""The tiny multi-reference generator the trainer and ``psr bench generate`` use (DIR/generator).

Skipped, with a note in the log, where the trainer's dependencies (diffusers, peft) are not
installed, e.g. on a reward-only worker image.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def write(root: Path) -> dict[str, dict]:
    try:
        from trainer.tiny import make_tiny_generator
    except ImportError as exc:
        log.warning("not writing the tiny generator (trainer dependencies missing: %s)", exc)
        return {}
    make_tiny_generator(root / "generator")
    return {}
