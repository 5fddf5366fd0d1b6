"""What a score is and how per-reward results become one answer: shared by every transport.

The HTTP server, the queue workers and the client's queue transport all build the same
``ScoreResponse`` with ``assemble_response`` and refuse the same incomplete samples with
``check_inputs``, so an answer does not depend on the route a request took.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from shared.protocol import InvalidRequest, Sample, SampleError, ScoreResponse

# Inputs a reward may need besides the image.
PROMPT = "prompt"
SUBJECTS = "subjects"  # categories
REFERENCES = "references"  # a reference image for every subject


@dataclass
class ScoreResult:
    """The outcome of one reward on one sample: a score, or ``None`` with the reason."""

    score: float | None
    details: dict[str, Any] | None = None
    error: str | None = None

    @classmethod
    def failed(cls, message: str, details: dict[str, Any] | None = None) -> ScoreResult:
        return cls(score=None, details=details, error=message)


def missing_input(name: str, inputs: Collection[str], sample: Sample) -> str | None:
    """Why ``sample`` lacks one of ``inputs`` that reward ``name`` needs, or ``None`` if it is complete."""
    if PROMPT in inputs and not sample.prompt.strip():
        return f"reward {name!r} needs a prompt"
    if SUBJECTS in inputs and not sample.subjects:
        return f"reward {name!r} needs at least one subject"
    if REFERENCES in inputs:
        if not sample.subjects:
            return f"reward {name!r} needs subjects with reference images"
        missing = [i for i, s in enumerate(sample.subjects) if s.reference is None]
        if missing:
            return f"reward {name!r} needs a reference image for subjects {missing}"
    return None


def check_inputs(inputs: Mapping[str, Collection[str]], samples: list[Sample]) -> None:
    """Refuse (422) a request whose samples lack an input a requested reward needs.

    ``inputs`` maps each requested reward name to the inputs it needs."""
    problems = []
    for name, needed in inputs.items():
        for i, sample in enumerate(samples):
            why = missing_input(name, needed, sample)
            if why:
                problems.append(f"samples[{i}]: {why}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise InvalidRequest("; ".join(problems[:5]) + more)


def assemble_response(
    weights: Mapping[str, float], results: Mapping[str, list[ScoreResult]], versions: Mapping[str, str], n: int
) -> ScoreResponse:
    """Per-reward score lists, weighted totals (null if any part failed), errors and details."""
    scores: dict[str, list[float | None]] = {}
    details: dict[str, list[dict[str, Any] | None]] = {}
    errors: list[SampleError] = []
    for name, per_sample in results.items():
        column = []
        for i, result in enumerate(per_sample):
            value = result.score
            if value is not None and not math.isfinite(value):
                result = ScoreResult.failed(f"reward produced a non-finite score ({value})", result.details)
                value = None
            if value is None:
                errors.append(SampleError(sample=i, reward=name, message=result.error or "reward gave no score"))
            column.append(None if value is None else float(value))
        scores[name] = column
        if any(r.details for r in per_sample):
            details[name] = [r.details for r in per_sample]
    total: list[float | None] = []
    for i in range(n):
        parts = [scores[name][i] for name in weights]
        value = None if any(p is None for p in parts) else sum(weights[k] * scores[k][i] for k in weights)
        if value is not None and not math.isfinite(value):  # huge weights overflow; JSON has no inf
            errors.append(SampleError(sample=i, reward="total", message=f"weighted total is not finite ({value})"))
            value = None
        total.append(value)
    return ScoreResponse(
        scores=scores, total=total, errors=errors, details=details, versions={k: versions[k] for k in weights}
    )
