"""``psr datagen merge``: join the shards of one run into one dataset folder and report the counts.

Shards must come from the same run (seed, categories, settings), each shard once, each finished
(no pending item, its ``dataset.json`` written after its last record). Items are ordered by index, so the merge of N shards equals the
dataset of one unsharded run. Paths are rewritten relative to the merged folder; a shard outside
it has its images copied in (hard links where the file system allows).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from shared.config import ConfigError
from trainer.datagen.manifest import RunFolder
from trainer.datagen.report import SUMMARY_FILE, contact_sheet
from trainer.dataset import SFT_RULES, DatasetError, load_dataset, read_json, write_dataset, write_json_atomic


def shard_folders(paths: list[Path]) -> list[Path]:
    """The run folders named: a folder holding ``shard-*`` subfolders stands for all of them."""
    out: list[Path] = []
    for path in paths:
        inner = sorted(p for p in path.glob("shard-*-of-*") if p.is_dir()) if path.is_dir() else []
        out += inner or [path]
    return list(dict.fromkeys(p.resolve() for p in out))


def _check_same_run(folders: list[Path]) -> list[dict[str, Any]]:
    docs = []
    for folder in folders:
        doc = RunFolder(folder).read_run()
        if doc is None:
            raise ConfigError(f"{folder} is not a psr datagen run folder (no run.json)")
        docs.append(doc)
    first = docs[0]
    for folder, doc in zip(folders, docs, strict=True):
        for key in ("seed", "categories", "run_hash", "total_items"):
            if doc.get(key) != first.get(key):
                raise ConfigError(f"{folder} is from another run than {folders[0]} ({key}: {doc.get(key)!r} != "
                                  f"{first.get(key)!r}): merge shards of one run, made with the same --limit")
    counts = {doc["shard"][1] for doc in docs}
    if len(counts) != 1:
        raise ConfigError(f"the shards were made with different shard counts {sorted(counts)}")
    count = counts.pop()
    seen: dict[int, Path] = {}
    for folder, doc in zip(folders, docs, strict=True):
        index = doc["shard"][0]
        if index in seen:
            raise ConfigError(f"shard {index}/{count} is given twice: {seen[index]} and {folder}")
        seen[index] = folder
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise ConfigError(f"shard(s) {', '.join(f'{i}/{count}' for i in missing)} are missing; "
                          "merge once every shard has finished")
    return docs


def _place(folder: Path, relpath: str, out: Path) -> str:
    """``relpath`` of ``folder`` as seen from ``out``; copied into ``out`` when the shard lies outside it."""
    source = folder / relpath
    rel = os.path.relpath(source, out)
    if not rel.startswith(".."):
        return rel
    target = out / folder.name / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    return f"{folder.name}/{relpath}"


def merge_shards(paths: list[Path], out: Path, sheet_items: int = 16, sheet_thumb: int = 160) -> dict[str, Any]:
    """Write ``out/dataset.json`` (and summary, contact sheet) from the shards; returns the merged summary."""
    folders = shard_folders(paths)
    if not folders:
        raise ConfigError("no shard folders given")
    out = out.resolve()
    docs = _check_same_run(folders)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the merged folder ({exc.strerror or exc})") from None
    entries: list[dict[str, Any]] = []
    ids: dict[str, Path] = {}
    totals: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    shards = []
    for folder, doc in zip(folders, docs, strict=True):
        summary = read_json(folder / SUMMARY_FILE, []) or {}
        if not (folder / "dataset.json").is_file() or not doc.get("dataset_current"):
            why = "has not written its dataset yet" if not (folder / "dataset.json").is_file() else \
                "has records newer than its dataset.json (a stage ran after it was written)"
            raise ConfigError(f"{folder} {why}: finish it with psr datagen ... --resume")
        if summary.get("pending"):
            raise ConfigError(f"{folder} has {summary['pending']} pending item(s): finish it with psr datagen ... --resume")
        try:
            _, items = load_dataset(folder, SFT_RULES)
        except DatasetError as exc:
            raise ConfigError(f"{folder}: {exc}") from exc
        for item in items:
            entry = dict(item.raw)
            if entry["id"] in ids:
                raise ConfigError(f"item {entry['id']} is in both {ids[entry['id']]} and {folder}")
            ids[entry["id"]] = folder
            entry["input_path"] = [_place(folder, p, out) for p in entry["input_path"]]
            entry["target_path"] = _place(folder, entry["target_path"], out)
            entries.append(entry)
        totals.update({k: summary.get(k, 0) for k in ("items", "kept", "pending")})
        dropped.update(summary.get("dropped", {}))
        shards.append({"folder": str(folder), "items": summary.get("items"), "kept": len(items)})
    entries.sort(key=lambda e: e["provenance"]["index"])
    write_dataset(out, entries)
    contact_sheet(out, entries, sheet_items, sheet_thumb)
    merged = {"out": str(out), "shards": shards, "items": totals["items"], "kept": len(entries),
              "dropped": dict(dropped), "pending": totals["pending"], "dataset": str(out / "dataset.json")}
    write_json_atomic(out / SUMMARY_FILE, merged)
    return merged
