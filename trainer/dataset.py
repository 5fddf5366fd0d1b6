"""The one dataset format: what ``psr datagen`` writes and SFT, Flow-GRPO and PSRBench read.

A dataset is a JSON list of items, each an object with

* ``instruction`` -- the prompt (subjects named by category, not described);
* ``input_path`` -- list of 1-4 reference image paths, relative to the file's folder
  (``input_paths`` is accepted as PSRBench's other spelling);
* ``category1`` .. ``categoryN`` -- one category word per reference, in order;
* ``target_path`` -- the target image (required by SFT, ignored by GRPO);
* ``result_path`` -- a generated image (PSRBench results);
* ``task`` -- one of ``TASKS`` (the PSRBench subset the item belongs to), optional;
* anything else (provenance: models, seeds, filter scores) is kept in ``raw`` untouched.

A dataset folder holds ``dataset.json`` (``DATASET_FILE``) beside its images; PSRBench's own
layout (one ``<Subset>.json`` per subset) is read by ``trainer.evaluation.dataset``, with the
same item rules. Loading validates every item and reports every problem with its file, item and
field (``DatasetError``); nothing is skipped silently.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import ConfigError

DATASET_FILE = "dataset.json"
MAX_REFERENCES = 4
# The seven PSRBench task types; an item's ``task`` names its subset (``task.title()``).
TASKS = ("attribute", "action", "background", "position", "complex", "three", "four")
_CATEGORY = re.compile(r"^category(\d+)$")


class DatasetError(ConfigError):
    """A dataset (or a results file) cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[str], what: str = "dataset"):
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        if len(self.problems) == 1:  # each problem names its file, item and field: one line says it all
            super().__init__(self.problems[0])
        else:
            super().__init__(f"{what} has {len(self.problems)} problems:\n{shown}{more}")


@dataclass
class DataItem:
    """One item: the instruction, its subjects (category + reference file), maybe a target."""

    index: int
    instruction: str
    input_paths: list[str]
    categories: list[str]
    target_path: str | None = None
    task: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class ItemRules:
    """What a reader requires of an item beyond an instruction."""

    references: bool = True  # 1-4 references (GRPO also trains on prompts without any)
    categories: bool = True  # one category per reference (GRPO accepts none at all)
    target: bool = False  # a ``target_path`` that exists (SFT)
    task: bool = False  # a ``task`` (PSRBench reading a dataset folder groups items by it)


BENCH_RULES = ItemRules()
BENCH_BY_TASK_RULES = ItemRules(task=True)
SFT_RULES = ItemRules(target=True)
GRPO_RULES = ItemRules(references=False, categories=False)


def read_json(path: Path, problems: list[str]) -> Any:
    """Parse a JSON file, recording (not raising) why it cannot be read."""
    if not path.is_file():
        problems.append(f"{path}: file is missing")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{path}: not valid JSON ({exc})")
        return None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _references(raw: dict, at: str, rules: ItemRules, root: Path | None, problems: list[str]) -> list[str]:
    if "input_path" in raw and "input_paths" in raw:
        problems.append(f"{at}: input_path: give either input_path or input_paths, not both")
        return []
    paths = raw.get("input_path", raw.get("input_paths"))
    if paths is None:
        if rules.references:
            problems.append(f"{at}: input_path: missing")
        return []
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        problems.append(f"{at}: input_path: must be a list of non-empty path strings, got {paths!r}")
        return []
    low = 1 if rules.references else 0
    if not low <= len(paths) <= MAX_REFERENCES:
        problems.append(f"{at}: input_path: needs {low} to {MAX_REFERENCES} references, got {len(paths)}")
        return []
    if root is not None:
        for j, p in enumerate(paths):
            if not (root / p).is_file():
                problems.append(f"{at}: input_path[{j}]: reference image {root / p} does not exist")
    return list(paths)


def _categories(raw: dict, at: str, n_refs: int, rules: ItemRules, problems: list[str]) -> list[str]:
    numbers = sorted(int(m.group(1)) for k in raw if (m := _CATEGORY.match(k)))
    if n_refs and numbers != list(range(1, n_refs + 1)) and (numbers or rules.categories):
        names = ", ".join(f"category{n}" for n in numbers) or "none"
        problems.append(f"{at}: category1..category{n_refs}: one per reference is required, found {names}")
    categories = []
    for n in numbers:
        value = raw[f"category{n}"]
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{at}: category{n}: must be a non-empty string, got {value!r}")
        categories.append(value)
    return categories


def parse_item(
    raw: Any,
    index: int,
    where: str,
    problems: list[str],
    root: Path | None = None,
    rules: ItemRules = BENCH_RULES,
) -> DataItem | None:
    """Validate one item; every problem is appended as ``FILE: item I: FIELD: reason``.

    ``root`` is the folder relative paths start from; when given, the files must exist."""
    at = f"{where}: item {index}"
    if not isinstance(raw, dict):
        problems.append(f"{at}: expected an object, got {type(raw).__name__}")
        return None
    before = len(problems)
    instruction = raw.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        problems.append(f"{at}: instruction: missing or not a non-empty string")
    paths = _references(raw, at, rules, root, problems)
    categories = _categories(raw, at, len(paths), rules, problems)
    target = raw.get("target_path")
    if target is None:
        if rules.target:
            problems.append(f"{at}: target_path: missing (supervised training needs the target image)")
    elif not isinstance(target, str) or not target:
        problems.append(f"{at}: target_path: must be a non-empty path string, got {target!r}")
    elif rules.target and root is not None and not (root / target).is_file():
        problems.append(f"{at}: target_path: target image {root / target} does not exist")
    task = raw.get("task")
    if task is None and rules.task:
        problems.append(f"{at}: task: missing (PSRBench groups items by task: {', '.join(TASKS)})")
    elif task is not None and task not in TASKS:
        problems.append(f"{at}: task: {task!r} is not one of {', '.join(TASKS)}")
    if len(problems) > before:
        return None
    return DataItem(index, instruction, paths, categories, target, task, dict(raw))


def dataset_file(path: str | Path) -> Path:
    """The JSON file of a dataset given as the file itself or its folder (``dataset.json``)."""
    path = Path(path)
    return path / DATASET_FILE if path.is_dir() else path


def load_dataset(path: str | Path, rules: ItemRules = BENCH_RULES) -> tuple[Path, list[DataItem]]:
    """Read and validate a dataset (file or folder); returns its root folder and its items.

    Raises ``DatasetError`` listing every problem found."""
    file = dataset_file(path)
    problems: list[str] = []
    data = read_json(file, problems)
    if data is not None and not isinstance(data, list):
        problems.append(f"{file}: expected a JSON list of items, got {type(data).__name__}")
    items = []
    if isinstance(data, list):
        if not data:
            problems.append(f"{file}: the dataset has no items")
        items = [parse_item(raw, i, str(file), problems, file.parent, rules) for i, raw in enumerate(data)]
    if problems:
        raise DatasetError(problems, f"dataset {file}")
    return file.parent, [it for it in items if it is not None]


def item_entry(
    instruction: str,
    input_paths: Sequence[str],
    categories: Sequence[str],
    target_path: str | None = None,
    task: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One item as it is written to ``dataset.json`` (the inverse of ``parse_item``)."""
    if len(categories) != len(input_paths):
        raise ValueError(f"{len(categories)} categories for {len(input_paths)} references")
    entry: dict[str, Any] = {"instruction": instruction, "input_path": list(input_paths)}
    entry.update({f"category{i + 1}": c for i, c in enumerate(categories)})
    if target_path is not None:
        entry["target_path"] = target_path
    if task is not None:
        entry["task"] = task
    entry.update(extra)
    return entry


def write_dataset(folder: str | Path, entries: Sequence[dict[str, Any]]) -> Path:
    """Write ``folder/dataset.json`` atomically after validating every entry against the folder."""
    folder = Path(folder)
    problems: list[str] = []
    for i, entry in enumerate(entries):
        parse_item(entry, i, str(folder / DATASET_FILE), problems, folder, ItemRules(categories=True))
    if problems:
        raise DatasetError(problems, f"dataset to write in {folder}")
    path = folder / DATASET_FILE
    write_json_atomic(path, list(entries))
    return path


def load_image(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8; raises ``OSError`` with the path when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise OSError(f"cannot read image {path}: {exc}") from exc
