"""Reference crops: content-keyed deduplication and an LRU cache of their embeddings.

References repeat: a GRPO group of 6 rollouts shares one set of references, and every epoch
shows the same ones again. A reference's crop and embedding depend only on its pixels, its
category and any box given for it, so they are computed once per batch and kept (LRU) for
later batches instead of being detected and embedded again for every rollout.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reward_server.models.detectors import Box


@dataclass(frozen=True)
class ReferenceEntry:
    """Where the subject is in its reference (``None``: the whole reference) and its unit embedding."""

    box: Box | None
    embedding: np.ndarray


def reference_key(image: np.ndarray, category: str, given_box: Sequence[float] | None) -> str:
    """A key that changes whenever the crop could: pixels, shape, category and a given box."""
    digest = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16)
    digest.update(repr((image.shape, category, None if given_box is None else [float(v) for v in given_box])).encode())
    return digest.hexdigest()


class ReferenceCache:
    """A bounded least-recently-used map from ``reference_key`` to ``ReferenceEntry``."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._entries: OrderedDict[str, ReferenceEntry] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: str) -> ReferenceEntry | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: ReferenceEntry) -> None:
        if self.capacity <= 0:
            return
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
