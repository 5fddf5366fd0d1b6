"""Results files: the benchmark items plus ``result_path`` of each generated image.

``psr bench generate`` writes ``{"format": "psrbench-results/1", "meta": {...}, "subsets":
{"Attribute": [item, ...], ...}}``. For other models' outputs the paper's form is accepted too:
``{"Attribute": [item, ...], ...}`` in one file, or a folder holding ``Attribute.json`` etc.
Relative ``result_path`` values are resolved against the results file's folder. A folder
without subset files but with a ``results.json`` (a ``generate`` output folder) reads that file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.dataset import DatasetError, read_json
from trainer.evaluation.dataset import SUBSETS, BenchItem

RESULTS_FORMAT = "psrbench-results/1"


def results_document(items: list[BenchItem], result_paths: dict[str, str], meta: dict[str, Any]) -> dict:
    """The results JSON: every item as in the benchmark, with ``result_path`` where generated."""
    subsets: dict[str, list[dict]] = {}
    for item in items:
        entry = dict(item.raw)
        if item.key in result_paths:
            entry["result_path"] = result_paths[item.key]
        subsets.setdefault(item.subset, []).append(entry)
    return {"format": RESULTS_FORMAT, "meta": meta, "subsets": subsets}


def _subset_lists(path: Path, problems: list[str]) -> tuple[dict[str, Any], Path]:
    has_subsets = path.is_dir() and any((path / f"{s}.json").is_file() for s in SUBSETS)
    if path.is_dir() and not has_subsets and (path / "results.json").is_file():
        path = path / "results.json"  # the output folder of `psr bench generate`
    if path.is_dir():
        lists = {s: read_json(path / f"{s}.json", problems) for s in SUBSETS if (path / f"{s}.json").is_file()}
        if not lists:
            problems.append(f"{path}: no subset files ({', '.join(s + '.json' for s in SUBSETS)}) in the folder")
        return lists, path
    data = read_json(path, problems)
    if data is None:
        return {}, path.parent
    if not isinstance(data, dict):
        problems.append(f"{path}: expected an object mapping subsets to item lists, got {type(data).__name__}")
        return {}, path.parent
    if "format" in data:
        if data["format"] != RESULTS_FORMAT:
            problems.append(f"{path}: format {data['format']!r} is not {RESULTS_FORMAT!r}")
        data = data.get("subsets", {})
    unknown = sorted(set(data) - set(SUBSETS))
    if unknown:
        problems.append(f"{path}: unknown subset(s) {unknown}; valid: {', '.join(SUBSETS)}")
    return {k: v for k, v in data.items() if k in SUBSETS}, path.parent


def read_existing(path: Path) -> dict[str, str]:
    """``item key -> result_path`` (as written) of a results file, for resuming; {} if absent."""
    if not path.exists():
        return {}
    problems: list[str] = []
    lists, _ = _subset_lists(path, problems)
    if problems:
        raise DatasetError(problems, f"results file {path}")
    out = {}
    for subset, entries in lists.items():
        for i, entry in enumerate(entries or []):
            if isinstance(entry, dict) and isinstance(entry.get("result_path"), str):
                out[f"{subset}/{i:04d}"] = entry["result_path"]
    return out


def load_result_paths(path: str | Path, items: list[BenchItem]) -> dict[str, Path | None]:
    """Map each benchmark item's key to its generated image (``None`` where it has none).

    The results must list the same items as the benchmark, in the same order with the same
    instructions; any mismatch or malformed ``result_path`` raises ``DatasetError``.
    """
    path = Path(path)
    problems: list[str] = []
    lists, base = _subset_lists(path, problems)
    by_subset: dict[str, list[BenchItem]] = {}
    for item in items:
        by_subset.setdefault(item.subset, []).append(item)
    out: dict[str, Path | None] = {}
    for subset, bench_items in by_subset.items():
        where = f"{path}: {subset}"
        entries = lists.get(subset)
        if entries is None:
            out.update({it.key: None for it in bench_items})
            continue
        if not isinstance(entries, list):
            problems.append(f"{where}: expected a list of items, got {type(entries).__name__}")
            continue
        if len(entries) != len(bench_items):
            problems.append(f"{where}: has {len(entries)} items, the benchmark has {len(bench_items)}")
        for item, entry in zip(bench_items, entries, strict=False):
            at = f"{where}: item {item.index}"
            if not isinstance(entry, dict):
                problems.append(f"{at}: expected an object, got {type(entry).__name__}")
                continue
            if entry.get("instruction") != item.instruction:
                problems.append(f"{at}: instruction {entry.get('instruction')!r} differs from the benchmark's "
                                f"{item.instruction!r} (results of another benchmark version?)")
            result = entry.get("result_path")
            if result is not None and (not isinstance(result, str) or not result):
                problems.append(f"{at}: result_path: must be a non-empty path string, got {result!r}")
                continue
            out[item.key] = None if result is None else (base / result)
    if problems:
        raise DatasetError(problems, f"results {path}")
    return out


def results_label(path: str | Path) -> str:
    """A short name for a result set: the generator's ``meta.model`` if recorded, else the folder name."""
    path = Path(path).resolve()
    if path.is_dir() and (path / "results.json").is_file():
        path = path / "results.json"
    try:
        model = json.loads(path.read_text()).get("meta", {}).get("model") if path.is_file() else None
    except (OSError, json.JSONDecodeError, AttributeError):
        model = None
    return Path(model).name if isinstance(model, str) and model else (path if path.is_dir() else path.parent).name


def results_meta(path: str | Path) -> dict[str, Any] | None:
    """The ``meta`` (model, LoRA, seed, steps...) a ``psr bench generate`` results file records, else None."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        meta = json.loads(path.read_text()).get("meta") if path.is_file() else None
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return meta if isinstance(meta, dict) else None
