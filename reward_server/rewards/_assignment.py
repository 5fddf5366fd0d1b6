"""One-to-one assignment of candidate detections to subject references (pure, no model).

The released PSR code pairs each reference with the first box of its category, so two subjects
of one category are told apart by box order, and one crop may serve two references. Here every
candidate box (of every category in the image) is matched to at most one reference, and every
reference to at most one box of its own category, maximising the total similarity (Hungarian,
``scipy.optimize.linear_sum_assignment``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_FORBIDDEN = -1e6  # cost of pairing a reference with a box of another category


@dataclass(frozen=True)
class SubjectMatch:
    """The outcome for one subject: which candidate it got (or none) and how similar it is."""

    candidate: int | None  # index into the candidate list, None when the subject is missing
    similarity: float | None  # cosine of the assigned crop and the reference
    confused_with: int | None  # another subject whose reference the assigned crop is closer to


def assign(
    similarity: np.ndarray,
    subject_categories: Sequence[str],
    candidate_categories: Sequence[str],
) -> list[SubjectMatch]:
    """Match subjects (rows) to candidates (columns) one to one within categories.

    ``similarity[i, k]`` is the cosine of reference ``i`` and candidate crop ``k``. A subject whose
    category has fewer candidates than subjects is left unmatched (``candidate=None``).
    The assigned crop of subject ``i`` is *confused* when another reference ``j`` (of any
    category) is more similar to it than reference ``i`` is; ``confused_with`` names the closest.
    """
    n_subjects, n_candidates = len(subject_categories), len(candidate_categories)
    if similarity.shape != (n_subjects, n_candidates):
        raise ValueError(f"similarity has shape {similarity.shape}, expected {(n_subjects, n_candidates)}")
    matches = [SubjectMatch(None, None, None)] * n_subjects
    if n_subjects == 0 or n_candidates == 0:
        return matches
    allowed = np.equal.outer(np.asarray(subject_categories, dtype=object), np.asarray(candidate_categories, dtype=object))
    weights = np.where(allowed, similarity, _FORBIDDEN)
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(weights, maximize=True)
    for i, k in zip(rows.tolist(), cols.tolist(), strict=True):
        if not allowed[i, k]:
            continue  # the solver had to fill the row; there is no box of this category left
        column = similarity[:, k]
        others = [j for j in range(n_subjects) if j != i and column[j] > column[i]]
        confused = max(others, key=lambda j: column[j]) if others else None
        matches[i] = SubjectMatch(candidate=k, similarity=float(similarity[i, k]), confused_with=confused)
    return matches
