"""What a stage is: it turns a batch of items (everything earlier stages recorded about them) into
one record per item, kept or dropped. Models load on the first batch (a stage with nothing to do
loads nothing) and are released when the stage ends, so one GPU holds one stage's models.
"""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from trainer.datagen.config import DatagenConfig
from trainer.datagen.filters import RewardFilters
from trainer.datagen.manifest import RunFolder

Item = dict[str, Any]


@dataclass
class StageContext:
    """What every stage shares: the config (model paths resolved), the run folder, the reward filters."""

    cfg: DatagenConfig
    run: RunFolder
    versions: dict[str, str] = field(default_factory=dict)
    _filters: RewardFilters | None = None

    def filters(self) -> RewardFilters:
        """The reward-service filters, checked (reachable, rewards hosted) on first use."""
        if self._filters is None:
            filters = RewardFilters(self.cfg.filters)
            filters.check_service()
            self._filters = filters
        return self._filters

    def close(self) -> None:
        """Close the reward client; the versions of the rewards it used join ``versions``."""
        if self._filters is not None:
            self.versions.update({f"reward:{k}": v for k, v in self._filters.versions.items()})
            self._filters.close()
            self._filters = None


class Stage:
    """Base: ``process`` a batch of items into records; ``load`` models lazily; ``close`` frees them."""

    name: ClassVar[str]
    needs: ClassVar[str | None]  # the stage whose kept items are this stage's input

    def __init__(self, ctx: StageContext):
        self.ctx, self.cfg, self.run = ctx, ctx.cfg, ctx.run
        self.loaded = False

    @property
    def batch_size(self) -> int:
        raise NotImplementedError

    def load(self) -> None:
        """Load this stage's models (called before the first batch)."""

    def process(self, items: list[Item]) -> list[Item]:
        """One record per item (``records.kept`` / ``records.dropped``), in order."""
        raise NotImplementedError

    def run_batch(self, items: list[Item]) -> list[Item]:
        if not self.loaded:
            self.load()
            self.loaded = True
        records = self.process(items)
        if [r["id"] for r in records] != [it["id"] for it in items]:
            raise RuntimeError(f"stage {self.name} returned records that do not match its items")
        return records

    def close(self) -> None:
        """Release the models (attributes set in ``load``) and the GPU memory they held."""
        for name in list(vars(self)):
            if name not in ("ctx", "cfg", "run", "loaded"):
                setattr(self, name, None)
        self.loaded = False
        # A full collection costs ~0.5 s in a process holding torch and transformers: worth it only
        # where a model held in a reference cycle would keep GPU memory the next stage needs (on the
        # CPU, reference counting and the automatic collector free it).
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            gc.collect()
            torch.cuda.empty_cache()


def square(image: np.ndarray, fill: int = 255) -> np.ndarray:
    """Pad an image to a square on a plain background (a crop keeps its proportions as a model input)."""
    height, width = image.shape[:2]
    side = max(height, width)
    out = np.full((side, side, 3), fill, dtype=np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    out[top : top + height, left : left + width] = image
    return out


def chunks(seq: list, size: int) -> list[list]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]
