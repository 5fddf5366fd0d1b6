"""``subject_consistency``: the PSR pairwise subject-consistency reward.

For every subject (category word + reference image) of a sample: find candidate boxes of the
category in the generated image with an open-vocabulary detector, crop the subject out of its
reference the same way (or take the reference whole when it is already a clean crop), embed all
crops of the whole batch in one pass, and assign candidates to references one to one
(``_assignment.assign``). Score = mean over subjects of the cosine similarity; a subject with no
candidate scores 0 and is reported missing. Unlike the paper's released code there is no
whole-image fallback, unless ``paper_fallback: true`` asks for it to reproduce the paper's numbers.

References are processed once per batch however many samples share them, and their crop
embeddings are kept in an LRU cache (``reference_cache_size``) for later batches.

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
from reward_server.rewards._references import ReferenceCache, ReferenceEntry, reference_key
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
    reference_cache_size: int = Field(
        default=4096, ge=0, description="references whose crop embedding is kept between batches (LRU); 0 disables"
    )


@dataclass
class _Job:
    """One sample's candidate crops (rows of the batch's embedding matrix) and reference keys."""

    categories: list[str]
    reference_keys: list[str]
    candidate_categories: list[str] = field(default_factory=list)
    candidate_boxes: list[Box] = field(default_factory=list)
    candidate_scores: list[float] = field(default_factory=list)
    candidate_rows: list[int] = field(default_factory=list)
    whole_image_row: int | None = None


@dataclass
class _Pending:
    """A reference not seen before: detected (maybe), cropped and embedded in this batch."""

    image: np.ndarray
    category: str
    given_box: list[float] | None
    box: Box | None = None
    row: int = -1


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
        self.cache = ReferenceCache(self.options.reference_cache_size)
        self.last_timings: dict[str, float] = {}
        self.last_counts: dict[str, int] = {}

    # ---- stages -------------------------------------------------------------------------------

    def plan(self, samples: Sequence[Sample]) -> tuple[list[list[str]], dict[str, ReferenceEntry], dict[str, _Pending]]:
        """Reference keys per sample; the cached references; the new ones, each once per batch."""
        keys, known, pending = [], {}, {}
        for s in samples:
            given = s.metadata.get("reference_boxes") or []
            row = []
            for j, sub in enumerate(s.subjects):
                box = given[j] if j < len(given) and given[j] and self.options.reference_crop == "detect" else None
                key = reference_key(sub.reference, sub.category, box)
                row.append(key)
                if key in known or key in pending:
                    continue
                entry = self.cache.get(key)
                if entry is not None:
                    known[key] = entry
                else:
                    pending[key] = _Pending(sub.reference, sub.category, box)
            keys.append(row)
        return keys, known, pending

    def detect(self, samples: Sequence[Sample], pending: dict[str, _Pending]) -> list:
        """Detect every sample's categories in its image and each new reference's subject: one batched call."""
        images = [s.image for s in samples]
        categories = [[sub.category for sub in s.subjects] for s in samples]
        hints: list[dict[str, Any] | None] = [s.metadata for s in samples]
        todo = list(pending.values()) if self.options.reference_crop == "detect" else []
        for ref in todo:
            images.append(ref.image)
            categories.append([ref.category])
            hints.append({"boxes": {ref.category: [ref.given_box]}} if ref.given_box else None)
        found = self.detector.detect(images, categories, hints)
        for ref, hits in zip(todo, found[len(samples) :], strict=True):
            best = hits.get(ref.category, [])
            ref.box = best[0].box if best else None  # no box: the reference is taken whole
        return found[: len(samples)]

    def crop(
        self, samples: Sequence[Sample], generated: list, keys: list[list[str]], pending: dict[str, _Pending]
    ) -> tuple[list[_Job], list[np.ndarray]]:
        """Cut every candidate box and every new reference subject; returns the jobs and the flat crop list."""
        crops: list[np.ndarray] = []
        jobs = []
        for sample, found, sample_keys in zip(samples, generated, keys, strict=True):
            job = _Job(categories=[sub.category for sub in sample.subjects], reference_keys=sample_keys)
            for category in dict.fromkeys(job.categories):
                for det in found.get(category, []):
                    job.candidate_categories.append(category)
                    job.candidate_boxes.append(det.box)
                    job.candidate_scores.append(det.score)
            for piece in crop_boxes(sample.image, job.candidate_boxes):
                job.candidate_rows.append(len(crops))
                crops.append(piece)
            if self.options.paper_fallback:
                job.whole_image_row = len(crops)
                crops.append(sample.image)
            jobs.append(job)
        for ref in pending.values():
            ref.row = len(crops)
            crops.append(crop_boxes(ref.image, [ref.box])[0] if ref.box else ref.image)
        return jobs, crops

    def embed(self, crops: list[np.ndarray]) -> torch.Tensor:
        """L2-normalised embeddings of all crops of the batch (chunked only to bound memory)."""
        step = self.options.embed_batch_size
        parts = [self.embedder.embed(crops[i : i + step]) for i in range(0, len(crops), step)]
        return torch.cat(parts) if parts else torch.empty(0, self.embedder.dim)

    def assign(
        self, jobs: list[_Job], embeddings: torch.Tensor, known: dict[str, ReferenceEntry], pending: dict[str, _Pending]
    ) -> list[ScoreResult]:
        """Cache the new references, then match per sample and average the similarities."""
        emb = embeddings.float().cpu().numpy()
        references = dict(known)
        for key, ref in pending.items():
            references[key] = ReferenceEntry(box=ref.box, embedding=emb[ref.row].copy())
            self.cache.put(key, references[key])
        return [self._score_job(job, emb, [references[k] for k in job.reference_keys]) for job in jobs]

    def _score_job(self, job: _Job, emb: np.ndarray, references: list[ReferenceEntry]) -> ScoreResult:
        refs = np.stack([r.embedding for r in references])
        similarity = refs @ emb[job.candidate_rows].T if job.candidate_rows else np.zeros((len(refs), 0))
        matches = assign(similarity, job.categories, job.candidate_categories)
        subjects, values = [], []
        for i, match in enumerate(matches):
            value, detail = self._subject_value(i, match, job, refs, emb)
            detail["reference_box"] = _rounded(references[i].box)
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
        keys, known, pending = self.plan(samples)
        generated = self.detect(samples, pending)
        timings["detect"] = time.perf_counter() - start
        start = time.perf_counter()
        jobs, crops = self.crop(samples, generated, keys, pending)
        timings["crop"] = time.perf_counter() - start
        start = time.perf_counter()
        embeddings = self.embed(crops)
        if embeddings.device.type == "cuda":
            torch.cuda.synchronize(embeddings.device)
        timings["embed"] = time.perf_counter() - start
        start = time.perf_counter()
        results = self.assign(jobs, embeddings, known, pending)
        timings["assign"] = time.perf_counter() - start
        self.last_timings = timings
        self.last_counts = {"crops": len(crops), "new_references": len(pending), "cached_references": len(known)}
        return results


def _rounded(box: Box | None) -> list[float] | None:
    return None if box is None else [round(v, 1) for v in box]
