"""``position``: rule-based scoring of spatial relations from detector boxes.

The rule (after T2I-CompBench's 2-D spatial score): with ``dx = cx(B) - cx(A)`` and
``dy = cy(B) - cy(A)`` (box centres in pixels; image y grows downwards), "A left of B" needs
``dx > 0`` and ``|dx| > |dy|``; right/above/below likewise. A correct direction scores 1, or
``0.1 / IoU`` when the boxes overlap with IoU >= 0.1; a wrong direction scores 0. "next to"
(``next_to_rule: distance``, the default) scores 1 when the centre distance
``d = sqrt(dx^2 + dy^2)`` is at most 150 px, else ``150 / d``. ``next_to_rule: t2i_compbench``
reproduces T2I-CompBench instead: 1 when ``|dx|`` *or* ``|dy|`` is under 150 px, else
``150 / max(|dx|, |dy|)`` -- which calls boxes 416 px apart on one axis and 40 px on the other
"next to" each other. A category that is not detected scores 0 (reported), never a whole-image guess.

The released PSR evaluation differs (for reproducing its numbers, not followed here): its phrase
list never matches "next to", "left of" or "right of" (those prompts go unscored), it truncates
boxes to integer pixels, and its above/below checks only the sign of ``dy``, not which axis dominates.

The relation comes from ``metadata["relation"] = {"subject": ..., "relation": ..., "object": ...}``
or is parsed from the prompt: the relation phrase, the subject category mentioned last before it
and the object category mentioned first after it (categories from the sample's subjects).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from reward_server.models.detectors import Box, DetectorOptions, build_detector
from reward_server.models.device import resolve_device, resolve_dtype
from reward_server.rewards import register
from reward_server.rewards.base import PROMPT, Reward, ScoreResult
from shared.config import StrictModel
from shared.protocol import Sample

# phrase -> canonical relation; longer phrases first so "on the left of" wins over "left of"
RELATIONS: dict[str, str] = {
    "to the left of": "left",
    "on the left of": "left",
    "on the left side of": "left",
    "left of": "left",
    "to the right of": "right",
    "on the right of": "right",
    "on the right side of": "right",
    "right of": "right",
    "on top of": "above",
    "above": "above",
    "below": "below",
    "under": "below",
    "underneath": "below",
    "beneath": "below",
    "next to": "next_to",
    "beside": "next_to",
    "near": "next_to",
}
_PHRASE = re.compile(r"\b(" + "|".join(re.escape(p) for p in sorted(RELATIONS, key=len, reverse=True)) + r")\b", re.I)


@dataclass(frozen=True)
class Relation:
    subject: str
    relation: str  # left, right, above, below, next_to
    object: str


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two xyxy boxes."""
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


NextToRule = Literal["distance", "t2i_compbench"]


def next_to_score(dx: float, dy: float, distance_px: float = 150.0, rule: NextToRule = "distance") -> float:
    """"next to" from the centre offsets (see the module docstring for both rules)."""
    if rule == "t2i_compbench":
        if abs(dx) < distance_px or abs(dy) < distance_px:
            return 1.0
        return distance_px / max(abs(dx), abs(dy))
    if rule != "distance":
        raise ValueError(f"unknown next_to rule {rule!r}; use 'distance' or 't2i_compbench'")
    distance = math.hypot(dx, dy)
    return 1.0 if distance <= distance_px else distance_px / distance


def relation_score(relation: str, a: Box, b: Box, iou_threshold: float = 0.1, distance_px: float = 150.0,
                   next_to_rule: NextToRule = "distance") -> float:
    """Score "A <relation> B" from the two boxes (see the module docstring for the rule)."""
    dx = (b[0] + b[2]) / 2 - (a[0] + a[2]) / 2
    dy = (b[1] + b[3]) / 2 - (a[1] + a[3]) / 2
    if relation == "next_to":
        return next_to_score(dx, dy, distance_px, next_to_rule)
    direction_ok = {
        "left": dx > 0 and abs(dx) > abs(dy),
        "right": dx < 0 and abs(dx) > abs(dy),
        "above": dy > 0 and abs(dy) > abs(dx),
        "below": dy < 0 and abs(dy) > abs(dx),
    }
    if relation not in direction_ok:
        raise ValueError(f"unknown relation {relation!r}; known: left, right, above, below, next_to")
    if not direction_ok[relation]:
        return 0.0
    overlap = iou(a, b)
    return iou_threshold / overlap if overlap >= iou_threshold else 1.0


def parse_relation(prompt: str, categories: Sequence[str]) -> Relation | str:
    """Find "A <relation> B" in ``prompt``; returns the relation or why it could not be found."""
    found = list(_PHRASE.finditer(prompt))
    if not found:
        return f"no spatial relation ({', '.join(sorted(set(RELATIONS.values())))}) in the prompt"
    match = found[0]
    lower = prompt.lower()
    mentions = []
    for category in dict.fromkeys(c.lower() for c in categories):
        for m in re.finditer(r"\b" + re.escape(category) + r"s?\b", lower):
            mentions.append((m.start(), m.end(), category))
    before = [m for m in mentions if m[1] <= match.start()]
    after = [m for m in mentions if m[0] >= match.end()]
    if not before or not after:
        return f"could not find the subject categories {list(categories)} on both sides of {match.group(1)!r}"
    subject = max(before)[2]
    obj = min(after)[2]
    return Relation(subject=subject, relation=RELATIONS[match.group(1).lower()], object=obj)


class PositionOptions(StrictModel):
    """Options of the position reward."""

    detector: DetectorOptions = Field(default_factory=DetectorOptions, description="open-vocabulary detector")
    iou_threshold: float = Field(default=0.1, gt=0, le=1, description="overlap above which the score is threshold/IoU")
    next_to_distance_px: float = Field(default=150.0, gt=0, description="'next to' centre-distance threshold in pixels")
    next_to_rule: NextToRule = Field(
        default="distance", description="'distance': 1 within the threshold, else threshold/distance; "
        "'t2i_compbench': 1 when either axis offset is under it (T2I-CompBench, for reproduction)"
    )


@register
class PositionReward(Reward):
    """Spatial-relation score from detector boxes; 0 when a category is not found."""

    type_name = "position"
    code_version = "2"  # 2: "next to" by centre distance (was: either axis offset, T2I-CompBench)
    description = "rule-based spatial relation score (left/right/above/below/next to) from detector boxes"
    inputs = frozenset({PROMPT})
    Options = PositionOptions

    def load(self) -> None:
        device = resolve_device(self.spec.device)
        self.detector = build_detector(self.options.detector, device, resolve_dtype(self.spec.dtype, device))

    def relation_of(self, sample: Sample) -> Relation | str:
        given = sample.metadata.get("relation")
        if given is not None:
            try:
                canonical = RELATIONS.get(str(given["relation"]).lower(), str(given["relation"]))
                relation = Relation(subject=str(given["subject"]), relation=canonical, object=str(given["object"]))
            except (KeyError, TypeError):
                return "metadata.relation must be {subject, relation, object}"
            if canonical not in set(RELATIONS.values()):
                return f"unknown relation {given['relation']!r}; known: {', '.join(RELATIONS)}"
            return relation
        if not sample.subjects:
            return "position needs the categories: give subjects or metadata.relation"
        return parse_relation(sample.prompt, [s.category for s in sample.subjects])

    def score(self, samples: Sequence[Sample]) -> list[ScoreResult]:
        relations = [self.relation_of(s) for s in samples]
        todo = [i for i, r in enumerate(relations) if isinstance(r, Relation)]
        found = self.detector.detect(
            [samples[i].image for i in todo],
            [[relations[i].subject, relations[i].object] for i in todo],
            [samples[i].metadata for i in todo],
        )
        results: list[ScoreResult] = [ScoreResult.failed(str(r)) for r in relations]
        for i, detections in zip(todo, found, strict=True):
            results[i] = self._score_one(relations[i], detections)
        return results

    def _score_one(self, rel: Relation, detections: dict) -> ScoreResult:
        details: dict[str, Any] = {"subject": rel.subject, "relation": rel.relation, "object": rel.object}
        subj, obj = detections.get(rel.subject, []), detections.get(rel.object, [])
        if rel.subject == rel.object:  # "a dog left of a dog": either of the two best boxes may be A
            pairs = [(subj[0], subj[1]), (subj[1], subj[0])] if len(subj) >= 2 else []
        else:
            pairs = [(subj[0], obj[0])] if subj and obj else []
        if not pairs:
            details["missing"] = [c for c, d in ((rel.subject, subj), (rel.object, obj)) if not d] or [rel.subject]
            return ScoreResult(0.0, details=details)
        opts = self.options
        scored = [(relation_score(rel.relation, a.box, b.box, opts.iou_threshold, opts.next_to_distance_px,
                                  opts.next_to_rule), a, b) for a, b in pairs]
        value, a, b = max(scored, key=lambda t: t[0])
        details.update(subject_box=[round(v, 1) for v in a.box], object_box=[round(v, 1) for v in b.box], iou=round(iou(a.box, b.box), 4))
        return ScoreResult(float(value), details=details)
