"""The PSRBench layout: a root folder with one JSON list per subset plus the reference images.

Each item has ``instruction``, ``input_path`` (reference paths relative to the root; ``input_paths``
is accepted too), ``category1`` .. ``categoryN`` (one per reference) and, once generated,
``result_path``. Loading validates everything and reports every problem with its file, item and
field; nothing is skipped silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import ConfigError

SUBSETS = ("Attribute", "Action", "Background", "Position", "Complex", "Three", "Four")
MAX_REFERENCES = 4
_CATEGORY = re.compile(r"^category(\d+)$")


class DatasetError(ConfigError):
    """The benchmark (or a results file) cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[str], what: str = "PSRBench data"):
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{what} has {len(self.problems)} problem(s):\n{shown}{more}")


@dataclass
class BenchItem:
    """One benchmark prompt: the instruction, its subjects (category + reference file)."""

    subset: str
    index: int
    instruction: str
    input_paths: list[str]
    categories: list[str]
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        """Stable id of the item, e.g. ``Position/0007``."""
        return item_key(self.subset, self.index)


def item_key(subset: str, index: int) -> str:
    return f"{subset}/{index:04d}"


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


def parse_item(raw: Any, subset: str, index: int, where: str, problems: list[str],
               root: Path | None = None) -> BenchItem | None:
    """Validate one item; every problem is appended as ``FILE: item I: FIELD: reason``."""
    at = f"{where}: item {index}"
    if not isinstance(raw, dict):
        problems.append(f"{at}: expected an object, got {type(raw).__name__}")
        return None
    before = len(problems)
    instruction = raw.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        problems.append(f"{at}: instruction: missing or not a non-empty string")
    if "input_path" in raw and "input_paths" in raw:
        problems.append(f"{at}: input_path: give either input_path or input_paths, not both")
    paths = raw.get("input_path", raw.get("input_paths"))
    if paths is None:
        problems.append(f"{at}: input_path: missing")
        paths = []
    elif not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        problems.append(f"{at}: input_path: must be a list of non-empty path strings, got {paths!r}")
        paths = []
    elif not 1 <= len(paths) <= MAX_REFERENCES:
        problems.append(f"{at}: input_path: needs 1 to {MAX_REFERENCES} references, got {len(paths)}")
    elif root is not None:
        for j, p in enumerate(paths):
            if not (root / p).is_file():
                problems.append(f"{at}: input_path[{j}]: reference image {root / p} does not exist")
    numbers = sorted(int(m.group(1)) for k in raw if (m := _CATEGORY.match(k)))
    categories = []
    if paths and numbers != list(range(1, len(paths) + 1)):
        names = ", ".join(f"category{n}" for n in numbers) or "none"
        problems.append(f"{at}: category1..category{len(paths)}: one per reference is required, found {names}")
    for n in numbers:
        value = raw[f"category{n}"]
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{at}: category{n}: must be a non-empty string, got {value!r}")
        categories.append(value)
    if len(problems) > before:
        return None
    return BenchItem(subset, index, instruction, list(paths), categories, dict(raw))


def load_subset(root: Path, subset: str, problems: list[str]) -> list[BenchItem]:
    """Items of ``root/<subset>.json`` (problems are appended, valid items returned)."""
    path = root / f"{subset}.json"
    data = read_json(path, problems)
    if data is None:
        return []
    if not isinstance(data, list):
        problems.append(f"{path}: expected a JSON list of items, got {type(data).__name__}")
        return []
    items = [parse_item(raw, subset, i, str(path), problems, root) for i, raw in enumerate(data)]
    if not data:
        problems.append(f"{path}: the subset has no items")
    return [it for it in items if it is not None]


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
    items = [it for subset in names for it in load_subset(root, subset, problems)]
    if problems:
        raise DatasetError(problems, f"PSRBench data in {root}")
    return items


def load_image(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8; raises ``OSError`` with the path when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise OSError(f"cannot read image {path}: {exc}") from exc


def references(root: Path, item: BenchItem) -> list[np.ndarray]:
    """The item's reference images, in category order."""
    return [load_image(root / p) for p in item.input_paths]
