"""Category lists and the per-item plan: id, seed, task and subject categories, all from the run seed.

An item's plan depends only on ``(run seed, item index)``, never on which other items exist, so
a rerun, a resumed run and every shard agree on it. Shard ``I`` of ``N`` takes the indices
``k`` with ``k % N == I``.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from shared.config import ConfigError
from trainer.datagen.config import subjects_for

OBJECTS365 = "objects365"


def normalise(name: str) -> str:
    """``"Cabinet/shelf"`` -> ``"cabinet"``: the first alternative, lower case, single spaces."""
    return re.sub(r"\s+", " ", name.split("/")[0]).strip().lower()


def _clean(names: list[str], where: str) -> list[str]:
    out = list(dict.fromkeys(n for n in (normalise(x) for x in names) if n))
    if not out:
        raise ConfigError(f"{where}: the category list is empty; give at least as many categories as subjects per item")
    return out


def load_categories(spec: str | list[str]) -> list[str]:
    """The bundled Objects365 list (``"objects365"``), a text file (one name per line, ``#`` comments), or a list."""
    if isinstance(spec, list):
        return _clean(spec, "categories")
    if spec == OBJECTS365:
        text = resources.files("trainer.datagen").joinpath("objects365.txt").read_text(encoding="utf-8")
        where = "the bundled Objects365 list"
    else:
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"categories: {path} does not exist (use 'objects365', a text file, or a YAML list)")
        text, where = path.read_text(encoding="utf-8"), str(path)
    return _clean([line for line in text.splitlines() if not line.lstrip().startswith("#")], where)


def derive_seed(seed: int, *parts: object) -> int:
    """A 31-bit seed from the run seed and any labels (item index, stage, subject...)."""
    text = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % (2**31)


def item_id(seed: int, index: int) -> str:
    """The item's id: the run seed and the item's index, e.g. ``s0-0000042``."""
    return f"s{seed}-{index:07d}"


@dataclass(frozen=True)
class PlannedItem:
    """What an item is before any model ran: its id, seed, task and subject categories."""

    id: str
    index: int
    seed: int
    task: str
    categories: tuple[str, ...]

    def record(self) -> dict:
        return {"id": self.id, "index": self.index, "seed": self.seed, "task": self.task,
                "categories": list(self.categories)}


def plan_item(seed: int, index: int, categories: list[str], task_weights: dict[str, float]) -> PlannedItem:
    """Draw the task (by weight) and distinct categories for item ``index``."""
    rng = random.Random(derive_seed(seed, index, "plan"))
    tasks = [t for t, w in task_weights.items() if w > 0]
    task = rng.choices(tasks, weights=[task_weights[t] for t in tasks])[0]
    chosen = rng.sample(categories, subjects_for(task))
    return PlannedItem(item_id(seed, index), index, derive_seed(seed, index), task, tuple(chosen))


def check_enough(categories: list[str], task_weights: dict[str, float]) -> None:
    """Every task with a weight needs that many distinct categories."""
    need = max(subjects_for(t) for t, w in task_weights.items() if w > 0)
    if len(categories) < need:
        raise ConfigError(f"categories: {len(categories)} given, but tasks with {need} subjects need at least {need}")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)``; ``"auto"`` reads RANK / WORLD_SIZE (torchrun, accelerate)."""
    import os

    if text == "auto":
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise ConfigError(f"--shard {text!r} must look like I/N with 0 <= I < N (e.g. 3/8), or 'auto'")
    return int(match.group(1)), int(match.group(2))


def shard_indices(total: int, shard: tuple[int, int]) -> list[int]:
    """The item indices of shard ``I`` of ``N``: ``k % N == I``."""
    index, count = shard
    return list(range(index, total, count))
