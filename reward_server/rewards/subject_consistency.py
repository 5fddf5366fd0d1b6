"""``subject_consistency``: the PSR pairwise subject-consistency reward.

For every subject (category word + reference image) of a sample: find candidate boxes of the
category in the generated image with an open-vocabulary detector, crop the subject out of its
reference the same way (or take the reference whole when it is already a clean crop), embed all
crops of the whole batch in one pass, and assign candidates to references one to one
(``_assignment.assign``). Score = mean over subjects of the cosine similarity; a subject with no
candidate scores 0 and is reported missing. Unlike the paper's released code there is no
whole-image fallback, unless ``paper_fallback: true`` asks for it to reproduce the paper's numbers.

``spec.model`` is the embedder checkpoint (default facebook/dino-vits16, DINO v1 as in the paper);
``options.detector`` configures the detector (see ``reward_server.models.detectors``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from reward_server.models.detectors import Box, DetectorOptions, build_detector
from reward_server.models.device import resolve_device, resolve_dtype
from reward_server.models.preprocess import crop_boxes
from reward_server.rewards import register
from reward_server.rewards._assignment import SubjectMatch, assign
from reward_server.rewards.base import REFERENCES, SUBJECTS, Reward, ScoreResult
from shared.config import StrictModel
from shared.protocol import Sample

DEFAULT_EMBEDDER = "facebook/dino-vits16"


class SubjectOptions(StrictModel):
    """Options of the subject-consistency reward."""

    detector: DetectorOptions = Field(default_factory=DetectorOptions, description="open-vocabulary detector")
    embedder: Literal["dino", "dinov2", "clip"] = Field(default="dino", description="backbone kind of spec.model")
    reference_crop: Literal["detect", "none"] = Field(
        default="detect",
        description="'detect': crop the subject out of its reference with the detector (paper); "
        "'none': references are already clean subject crops",
    )
    paper_fallback: bool = Field(
        default=False,
        description="reproduce the released code: a subject with no box is compared on the whole generated "
        "image instead of scoring 0 (hides missing subjects; for reproducing the paper's numbers only)",
    )
    embed_batch_size: int = Field(default=256, ge=1, description="crops per embedder forward (bounds memory)")


@dataclass
class _Job:
    """One sample's crops and their positions in the batch-wide embedding matrix."""

    categories: list[str]
    candidate_categories: list[str] = field(default_factory=list)
    candidate_boxes: list[Box] = field(default_factory=list)
    candidate_scores: list[float] = field(default_factory=list)
    candidate_rows: list[int] = field(default_factory=list)
    reference_rows: list[int] = field(default_factory=list)
    reference_boxes: list[Box | None] = field(default_factory=list)
    whole_image_row: int | None = None


@register
class SubjectConsistencyReward(Reward):
    """Mean over subjects of DINO cosine similarity between matched generated and reference crops."""

    type_name = "subject_consistency"
    description = "pairwise subject consistency (PSR): detect, crop, embed, one-to-one match, mean cosine"
    inputs = frozenset({SUBJECTS, REFERENCES})
    Options = SubjectOptions
    code_version = "1"

    def load(self) -> None:
        from reward_server.models.embedders import ImageEmbedder

        self.device = resolve_device(self.spec.device)
        self.dtype = resolve_dtype(self.spec.dtype, self.device)
        self.detector = build_detector(self.options.detector, self.device, self.dtype)
        self.embedder = ImageEmbedder(self.spec.model or DEFAULT_EMBEDDER, self.options.embedder, self.device, self.dtype)
        self.last_timings: dict[str, float] = {}

    # ---- stages -------------------------------------------------------------------------------

    def detect(self, samples: Sequence[Sample]) -> tuple[list, list]:
        """Detect every sample's categories in its image, and each subject in its reference: one batched call."""
        images = [s.image for s in samples]
        categories = [[sub.category for sub in s.subjects] for s in samples]
        hints: list[dict[str, Any] | None] = [s.metadata for s in samples]
        n_generated = len(images)
        if self.options.reference_crop == "detect":
            for s in samples:
                given = s.metadata.get("reference_boxes") or [None] * len(s.subjects)
                for j, sub in enumerate(s.subjects):
                    images.append(sub.reference)
                    categories.append([sub.category])
                    hints.append({"boxes": {sub.category: [given[j]]}} if j < len(given) and given[j] else None)
        found = self.detector.detect(images, categories, hints)
        return found[:n_generated], found[n_generated:]

    def crop(self, samples: Sequence[Sample], generated: list, references: list) -> tuple[list[_Job], list[np.ndarray]]:
        """Cut every candidate box and every reference subject; returns the jobs and the flat crop list."""
        crops: list[np.ndarray] = []
        jobs = []
        ref_iter = iter(references)
        for sample, found in zip(samples, generated, strict=True):
            job = _Job(categories=[sub.category for sub in sample.subjects])
            for category in dict.fromkeys(job.categories):
                for det in found.get(category, []):
                    job.candidate_categories.append(category)
                    job.candidate_boxes.append(det.box)
                    job.candidate_scores.append(det.score)
            for piece in crop_boxes(sample.image, job.candidate_boxes):
                job.candidate_rows.append(len(crops))
                crops.append(piece)
            for sub in sample.subjects:
                box = None
                if self.options.reference_crop == "detect":
                    hits = next(ref_iter).get(sub.category, [])
                    box = hits[0].box if hits else None  # no box: the reference is taken whole
                job.reference_boxes.append(box)
                job.reference_rows.append(len(crops))
                crops.append(crop_boxes(sub.reference, [box])[0] if box else sub.reference)
            if self.options.paper_fallback:
                job.whole_image_row = len(crops)
                crops.append(sample.image)
            jobs.append(job)
        return jobs, crops

    def embed(self, crops: list[np.ndarray]) -> torch.Tensor:
        """L2-normalised embeddings of all crops of the batch (chunked only to bound memory)."""
        step = self.options.embed_batch_size
        parts = [self.embedder.embed(crops[i : i + step]) for i in range(0, len(crops), step)]
        return torch.cat(parts) if parts else torch.empty(0, self.embedder.dim)

    def assign(self, jobs: list[_Job], embeddings: torch.Tensor) -> list[ScoreResult]:
        """Hungarian matching per sample, then the mean similarity and the per-subject details."""
        emb = embeddings.float().cpu().numpy()
        return [self._score_job(job, emb) for job in jobs]

    def _score_job(self, job: _Job, emb: np.ndarray) -> ScoreResult:
        refs = emb[job.reference_rows]
        similarity = refs @ emb[job.candidate_rows].T if job.candidate_rows else np.zeros((len(refs), 0))
        matches = assign(similarity, job.categories, job.candidate_categories)
        subjects, values = [], []
        for i, match in enumerate(matches):
            value, detail = self._subject_value(i, match, job, refs, emb)
            values.append(value)
            subjects.append(detail)
        details = {
            "subjects": subjects,
            "missing": sum(d["missing"] for d in subjects),
            "confused": sum(d["confused"] for d in subjects),
            "candidates": len(job.candidate_rows),
        }
        return ScoreResult(float(np.mean(values)), details=details)

    def _subject_value(
        self, i: int, match: SubjectMatch, job: _Job, refs: np.ndarray, emb: np.ndarray
    ) -> tuple[float, dict[str, Any]]:
        detail: dict[str, Any] = {
            "category": job.categories[i],
            "missing": match.candidate is None,
            "box": None,
            "confidence": None,
            "similarity": match.similarity,
            "confused": match.confused_with is not None,
            "confused_with": match.confused_with,
            "reference_box": _rounded(job.reference_boxes[i]),
        }
        if match.candidate is not None:
            detail["box"] = _rounded(job.candidate_boxes[match.candidate])
            detail["confidence"] = round(job.candidate_scores[match.candidate], 4)
            return float(match.similarity), detail
        if job.whole_image_row is not None:  # paper_fallback: the whole image stands in for the subject
            fallback = float(refs[i] @ emb[job.whole_image_row])
            detail["similarity"], detail["fallback"] = fallback, "whole_image"
            return fallback, detail
        return 0.0, detail

    # ---- the contract -------------------------------------------------------------------------

    def score(self, samples: Sequence[Sample]) -> list[ScoreResult]:
        if not samples:
            return []
        timings = {}
        start = time.perf_counter()
        generated, references = self.detect(samples)
        timings["detect"] = time.perf_counter() - start
        start = time.perf_counter()
        jobs, crops = self.crop(samples, generated, references)
        timings["crop"] = time.perf_counter() - start
        start = time.perf_counter()
        embeddings = self.embed(crops)
        if embeddings.device.type == "cuda":
            torch.cuda.synchronize(embeddings.device)
        timings["embed"] = time.perf_counter() - start
        start = time.perf_counter()
        results = self.assign(jobs, embeddings)
        timings["assign"] = time.perf_counter() - start
        self.last_timings = timings
        return results


def _rounded(box: Box | None) -> list[float] | None:
    return None if box is None else [round(v, 1) for v in box]
