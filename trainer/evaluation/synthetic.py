"""A tiny synthetic PSRBench-format set: coloured-shape "subjects", instructions per subset and,
optionally, "generated" images that paste the subjects onto a background (for tests and the
README's walk-through; ``psr bench make-synthetic DIR``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from trainer.dataset import write_json_atomic
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


def make_synthetic_bench(root: str | Path, items_per_subset: int = 2, size: int = 64, seed: int = 0,
                         with_results: bool = True) -> Path:
    """Write the subset JSONs and reference images under ``root`` (and, with ``with_results``,
    ``root/results/results.json`` plus images). Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = list(CATEGORIES)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    for cat in names:
        Image.fromarray(shape_image(cat, size, rng)).save(root / "refs" / f"{cat}.png")
    from trainer.evaluation.dataset import load_bench

    for s_i, subset in enumerate(SUBSETS):
        n = SUBJECT_COUNT.get(subset, 2)
        items = []
        for i in range(items_per_subset):
            cats = [names[(s_i + i + k) % len(names)] for k in range(n)]
            item = {"instruction": TEMPLATES[subset].format(*cats), "input_path": [f"refs/{c}.png" for c in cats]}
            item.update({f"category{k + 1}": c for k, c in enumerate(cats)})
            items.append(item)
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
