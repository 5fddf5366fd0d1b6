"""PSRBench: a root folder with one JSON list per subset (``Attribute.json`` ... ``Four.json``).

Items follow the project's one dataset format (``trainer.dataset``): ``instruction``,
``input_path`` (reference paths relative to the root), ``category1`` .. ``categoryN`` and, once
generated, ``result_path``. A dataset folder written by ``psr datagen`` (``dataset.json`` whose
items carry a ``task``) is read too: its items are grouped into subsets by task. Loading
validates everything and reports every problem with its file, item and field.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.dataset import (
    BENCH_BY_TASK_RULES,
    DATASET_FILE,
    TASKS,
    DataItem,
    DatasetError,
    load_dataset,
    load_image,
    parse_item,
    read_json,
)

SUBSETS = tuple(task.title() for task in TASKS)  # Attribute, Action, ... Four

__all__ = ["SUBSETS", "BenchItem", "DatasetError", "item_key", "load_bench", "load_image", "references"]


@dataclass
class BenchItem(DataItem):
    """A benchmark item: a dataset item and the subset it belongs to."""

    subset: str = ""

    @property
    def key(self) -> str:
        """Stable id of the item, e.g. ``Position/0007``."""
        return item_key(self.subset, self.index)


def item_key(subset: str, index: int) -> str:
    return f"{subset}/{index:04d}"


def _bench_item(item: DataItem, subset: str, index: int) -> BenchItem:
    return BenchItem(**{**vars(item), "index": index}, subset=subset)


def load_subset(root: Path, subset: str, problems: list[str]) -> list[BenchItem]:
    """Items of ``root/<subset>.json`` (problems are appended, valid items returned)."""
    path = root / f"{subset}.json"
    data = read_json(path, problems)
    if data is None:
        return []
    if not isinstance(data, list):
        problems.append(f"{path}: expected a JSON list of items, got {type(data).__name__}")
        return []
    items = [parse_item(raw, i, str(path), problems, root) for i, raw in enumerate(data)]
    if not data:
        problems.append(f"{path}: the subset has no items")
    return [_bench_item(it, subset, it.index) for it in items if it is not None]


def load_by_task(root: Path, names: list[str], problems: list[str]) -> list[BenchItem]:
    """Items of a dataset folder (``dataset.json``, read by ``trainer.dataset``), grouped into subsets by task."""
    try:
        _, items = load_dataset(root, BENCH_BY_TASK_RULES)
    except DatasetError as exc:
        problems.extend(exc.problems)
        return []
    by_subset: dict[str, list[BenchItem]] = {s: [] for s in names}
    for item in items:
        if item.task.title() in by_subset:
            group = by_subset[item.task.title()]
            group.append(_bench_item(item, item.task.title(), len(group)))
    return [it for s in names for it in by_subset[s]]


def load_bench(root: str | Path, subsets: Iterable[str] | None = None) -> list[BenchItem]:
    """Load and validate the benchmark; raises ``DatasetError`` listing every problem found."""
    root = Path(root)
    names = list(subsets or SUBSETS)
    problems: list[str] = []
    unknown = [s for s in names if s not in SUBSETS]
    if unknown:
        raise DatasetError([f"unknown subset(s) {unknown}; valid: {', '.join(SUBSETS)}"])
    if not root.is_dir():
        raise DatasetError([f"{root}: the benchmark folder does not exist"])
    has_subset_files = any((root / f"{s}.json").is_file() for s in SUBSETS)
    if not has_subset_files and (root / DATASET_FILE).is_file():
        items = load_by_task(root, names, problems)
        if not items and not problems:
            problems.append(f"{root / DATASET_FILE}: no item has a task among {names}")
    else:
        items = [it for subset in names for it in load_subset(root, subset, problems)]
    if problems:
        raise DatasetError(problems, f"PSRBench data in {root}")
    return items


def references(root: Path, item: DataItem) -> list[np.ndarray]:
    """The item's reference images, in category order."""
    return [load_image(root / p) for p in item.input_paths]
