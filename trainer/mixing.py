"""Drawing training items, optionally by reference count with given probabilities (``data.reference_mix``).

The paper's SFT mixes items with 2, 3 and 4 references with probabilities 0.9 / 0.05 / 0.05: a
count is drawn with those probabilities, then an item with that many references uniformly.
Without a mix every item is equally likely. Draws are a function of the generator passed in, so a
step's items depend only on (seed, step, rank) and a resumed run draws what the first one would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ReferenceMix:
    """Draws item indices by reference count."""

    def __init__(self, counts: Sequence[int], mix: dict[int, float] | None = None):
        self.counts = np.asarray(counts, dtype=int)
        if self.counts.size == 0:
            raise ValueError("no training items")
        self.by_count = {int(k): np.flatnonzero(self.counts == k) for k in np.unique(self.counts)}
        self.mix = None
        if mix is not None:
            wanted = {int(k): float(p) for k, p in mix.items() if p > 0}
            missing = sorted(k for k in wanted if k not in self.by_count)
            if missing:
                have = ", ".join(f"{k}: {len(v)} items" for k, v in sorted(self.by_count.items()))
                raise ValueError(
                    f"data.reference_mix asks for items with {missing} references, but the data has none "
                    f"(reference counts in the data: {have})"
                )
            self.mix = (np.array(sorted(wanted)), np.array([wanted[k] for k in sorted(wanted)]))

    def draw(self, rng: np.random.Generator, n: int) -> list[int]:
        """``n`` item indices, each drawn independently."""
        if self.mix is None:
            return [int(i) for i in rng.choice(len(self.counts), size=n, replace=len(self.counts) < n)]
        values, probs = self.mix
        return [int(rng.choice(self.by_count[int(k)])) for k in rng.choice(values, size=n, p=probs / probs.sum())]

    def draw_batch(self, rng: np.random.Generator, n: int) -> list[int]:
        """``n`` item indices sharing one reference count (one model batch needs one layout)."""
        if self.mix is None:
            count = int(self.counts[rng.integers(len(self.counts))])  # counts weighted by how many items have them
        else:
            values, probs = self.mix
            count = int(rng.choice(values, p=probs / probs.sum()))
        pool = self.by_count[count]
        return [int(i) for i in rng.choice(pool, size=n, replace=len(pool) < n)]
