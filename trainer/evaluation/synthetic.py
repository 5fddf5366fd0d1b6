"""Tiny synthetic data in the project's dataset format: coloured-shape "subjects", an instruction per
PSRBench subset and composites that paste the subjects onto a background. Two layouts:
``make_synthetic_bench`` (PSRBench subset files, the composites as "generated" results) and
``make_synthetic_dataset`` (a training dataset, ``dataset.json`` with the composites as targets,
the format ``psr datagen`` writes). ``psr bench make-synthetic DIR [--dataset]``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from trainer.dataset import item_entry, write_dataset, write_json_atomic
from trainer.evaluation.dataset import SUBSETS
from trainer.evaluation.results import results_document

# category -> RGB colour of its shape
CATEGORIES = {"dog": (150, 90, 40), "cup": (40, 80, 200), "hat": (210, 30, 30), "cat": (120, 120, 120),
              "ball": (240, 200, 20), "vase": (30, 160, 90)}
TEMPLATES = {
    "Attribute": "a {0} wearing a striped {1}",
    "Action": "a {0} jumping over a {1}",
    "Background": "a {0} and a {1} on a snowy mountain",
    "Position": "a {0} to the left of a {1}",
    "Complex": "a sleepy {0} holding a {1} in a sunny kitchen",
    "Three": "a {0}, a {1} and a {2} on a table",
    "Four": "a {0}, a {1}, a {2} and a {3} in a garden",
}
SUBJECT_COUNT = {"Three": 3, "Four": 4}


def shape_image(category: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A reference image: the category's coloured square on a light noisy background."""
    img = rng.integers(200, 255, (size, size, 3), dtype=np.uint8)
    lo, hi = size // 4, 3 * size // 4
    img[lo:hi, lo:hi] = CATEGORIES[category]
    return img


def composite(refs: list[np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """A 'generated' image: each reference's subject pasted left to right on a background."""
    img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    cell = size // len(refs)
    for i, ref in enumerate(refs):
        small = np.asarray(Image.fromarray(ref).resize((cell, cell), Image.NEAREST))
        top = (size - cell) // 2
        img[top:top + cell, i * cell:(i + 1) * cell] = small
    return img


def _write_references(root: Path, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    (root / "refs").mkdir(parents=True, exist_ok=True)
    refs = {cat: shape_image(cat, size, rng) for cat in CATEGORIES}
    for cat, img in refs.items():
        Image.fromarray(img).save(root / "refs" / f"{cat}.png")
    return refs


def _subjects(subset_index: int, subset: str, item: int) -> list[str]:
    """The categories of one item: 2 subjects, 3 for Three, 4 for Four."""
    names = list(CATEGORIES)
    return [names[(subset_index + item + k) % len(names)] for k in range(SUBJECT_COUNT.get(subset, 2))]


def make_synthetic_dataset(root: str | Path, items_per_task: int = 2, size: int = 64, seed: int = 0) -> Path:
    """A training dataset under ``root``: references, one composite target per item, ``dataset.json``
    (items with ``target_path`` and ``task``). Returns the ``dataset.json`` path."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    refs = _write_references(root, size, rng)
    entries = []
    for s_i, subset in enumerate(SUBSETS):
        for i in range(items_per_task):
            cats = _subjects(s_i, subset, i)
            target = f"targets/{subset}/{i:04d}.png"
            (root / target).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(composite([refs[c] for c in cats], size, rng)).save(root / target)
            entries.append(item_entry(TEMPLATES[subset].format(*cats), [f"refs/{c}.png" for c in cats], cats,
                                      target_path=target, task=subset.lower(), source="synthetic"))
    return write_dataset(root, entries)


def make_synthetic_bench(root: str | Path, items_per_subset: int = 2, size: int = 64, seed: int = 0,
                         with_results: bool = True) -> Path:
    """Write the subset JSONs and reference images under ``root`` (and, with ``with_results``,
    ``root/results/results.json`` plus images). Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    _write_references(root, size, rng)
    from trainer.evaluation.dataset import load_bench

    for s_i, subset in enumerate(SUBSETS):
        items = []
        for i in range(items_per_subset):
            cats = _subjects(s_i, subset, i)
            items.append(item_entry(TEMPLATES[subset].format(*cats), [f"refs/{c}.png" for c in cats], cats))
        write_json_atomic(root / f"{subset}.json", items)
    if with_results:
        out = root / "results"
        paths = {}
        for item in load_bench(root):
            refs = [np.asarray(Image.open(root / p).convert("RGB")) for p in item.input_paths]
            rel = f"images/{item.subset}/{item.index:04d}.png"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(composite(refs, size, rng)).save(out / rel)
            paths[item.key] = rel
        write_json_atomic(out / "results.json", results_document(load_bench(root), paths, {"model": "synthetic"}))
    return root
