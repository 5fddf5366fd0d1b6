"""Generate an image for every benchmark item with any multi-reference generator; resumable.

The generator is a callable ``(prompts, references, seeds) -> images`` over a batch whose items
share one reference count (``trainer.evaluation.model`` builds one from the trainer's pipeline).
Images go to ``OUT/images/<Subset>/<index>.png``; ``OUT/results.json`` is rewritten atomically
after every batch, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shared.config import ConfigError
from shared.images import to_uint8_array
from trainer.dataset import write_json_atomic
from trainer.evaluation.dataset import SUBSETS, BenchItem, references
from trainer.evaluation.results import read_existing, results_document

GenerateFn = Callable[[Sequence[str], Sequence[Sequence[np.ndarray]], Sequence[int]], Sequence[Any]]
RESULTS_NAME = "results.json"


def lazy(load: Callable[[], GenerateFn]) -> GenerateFn:
    """A generator that loads the model on its first call (a finished run never loads it)."""
    loaded: list[GenerateFn] = []

    def generate(prompts, references, seeds):
        if not loaded:
            loaded.append(load())
        return loaded[0](prompts, references, seeds)

    return generate


def item_seed(seed: int, key: str) -> int:
    """A per-item seed that does not depend on batching or on which items were already done."""
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % (2**31)


def image_relpath(item: BenchItem) -> str:
    return f"images/{item.subset}/{item.index:04d}.png"


def _batches(items: list[BenchItem], size: int) -> Iterable[list[BenchItem]]:
    """Batches of items with the same number of references (the generator needs one layout)."""
    groups: dict[int, list[BenchItem]] = {}
    for item in items:
        groups.setdefault(len(item.input_paths), []).append(item)
    for group in groups.values():
        for i in range(0, len(group), size):
            yield group[i:i + size]


def _check_meta(path: Path, meta: dict[str, Any]) -> dict[str, list]:
    """Refuse to resume with other settings; returns the subsets already in the file."""
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    old = doc.get("meta", {})
    changed = [k for k in meta if k in old and old[k] != meta[k]]
    if changed:
        raise ConfigError(f"{path} was made with other {', '.join(changed)} "
                          f"({', '.join(f'{k}={old[k]!r}' for k in changed)}); use a new --out or --restart")
    return doc.get("subsets", {})


def run_generation(items: list[BenchItem], root: Path, generate: GenerateFn, out: Path, batch_size: int = 4,
                   seed: int = 0, meta: dict[str, Any] | None = None,
                   progress: Callable[[int], None] | None = None) -> Path:
    """Generate the items that have no image yet; returns the results JSON path."""
    out.mkdir(parents=True, exist_ok=True)
    results = out / RESULTS_NAME
    meta = {**(meta or {}), "seed": seed}
    earlier = _check_meta(results, meta)
    done = {k: v for k, v in read_existing(results).items() if (out / v).is_file()}

    def save() -> None:  # subsets outside this run's selection are kept as they were
        doc = results_document(items, done, meta)
        doc["subsets"] = {s: doc["subsets"].get(s, earlier.get(s)) for s in SUBSETS
                          if s in doc["subsets"] or s in earlier}
        write_json_atomic(results, doc)

    todo = [it for it in items if it.key not in done]
    progress = progress or (lambda n: None)
    progress(len(items) - len(todo))
    for batch in _batches(todo, batch_size):
        prompts = [it.instruction for it in batch]
        refs = [references(root, it) for it in batch]
        images = list(generate(prompts, refs, [item_seed(seed, it.key) for it in batch]))
        if len(images) != len(batch):
            raise RuntimeError(f"the generator returned {len(images)} images for {len(batch)} prompts")
        for item, image in zip(batch, images, strict=True):
            rel = image_relpath(item)
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(to_uint8_array(image)).save(out / rel)
            done[item.key] = rel
        save()
        progress(len(batch))
    save()
    return results
