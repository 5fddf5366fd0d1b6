"""Open-vocabulary detectors shared by the subject-consistency and position rewards.

``detect(images, categories)`` takes a batch of (H, W, 3) uint8 images and, for each image, the
category words to look for; it returns, per image, ``{category: [Detection, ...]}`` with pixel
``(x0, y0, x1, y1)`` boxes sorted by confidence (best first). Three kinds:

* ``grounding_dino``: ``GroundingDinoForObjectDetection`` (e.g. IDEA-Research/grounding-dino-tiny),
  text prompt ``"cat1. cat2."``; a query belongs to the category whose tokens score highest; kept
  when its best token score exceeds ``box_threshold`` (0.35) and its category's score exceeds
  ``text_threshold`` (0.25) -- the paper's thresholds.
* ``owlv2``: ``Owlv2ForObjectDetection`` (e.g. google/owlv2-base-patch16-ensemble), one text
  query per category (``query_template``), threshold ``box_threshold`` (default 0.1).
* ``fixed``: a test and reproduction tool, NOT a model. It returns the boxes a sample's metadata
  gives (``hint["boxes"] = {category: [[x0, y0, x1, y1, (score)], ...]}``), so reward logic can be
  tested on known boxes and precomputed detections can be replayed.

Both model kinds batch images of equal size together (chunks of ``batch_size``; padding would
make a sample's boxes depend on its batch-mates) and apply per-category NMS, keeping at most
``max_per_category`` boxes: duplicate boxes of one object must not serve as two subjects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from reward_server.models.preprocess import to_device_uint8
from shared.config import MODEL_REF, StrictModel

Box = tuple[float, float, float, float]
DetectorKind = Literal["grounding_dino", "owlv2", "fixed"]
DEFAULT_MODELS = {"grounding_dino": "IDEA-Research/grounding-dino-tiny", "owlv2": "google/owlv2-base-patch16-ensemble"}
DEFAULT_BOX_THRESHOLD = {"grounding_dino": 0.35, "owlv2": 0.1, "fixed": 0.0}


@dataclass(frozen=True)
class Detection:
    """One candidate box of one category, in pixels of the image it was found in."""

    box: Box
    score: float


Detections = dict[str, list[Detection]]


class DetectorOptions(StrictModel):
    """Which open-vocabulary detector to run and how to filter its boxes."""

    kind: DetectorKind = Field(default="grounding_dino", description="grounding_dino, owlv2, or fixed (tests)")
    model: str | None = Field(
        default=None, description="hub id or local path; default per kind (see DEFAULT_MODELS)", json_schema_extra=MODEL_REF
    )
    box_threshold: float | None = Field(
        default=None, ge=0, le=1, description="min box confidence; default 0.35 (grounding_dino), 0.1 (owlv2)"
    )
    text_threshold: float = Field(default=0.25, ge=0, le=1, description="grounding_dino: min category-token score")
    query_template: str = Field(default="a photo of a {}", description="owlv2: text query for a category")
    nms_iou: float = Field(default=0.5, gt=0, le=1, description="per-category NMS IoU; 1 disables NMS")
    max_per_category: int = Field(default=5, ge=1, le=100, description="most candidate boxes kept per category")
    batch_size: int = Field(default=16, ge=1, le=1024, description="images per detector forward pass")

    def threshold(self) -> float:
        return DEFAULT_BOX_THRESHOLD[self.kind] if self.box_threshold is None else self.box_threshold


def unique(categories: Sequence[str]) -> list[str]:
    """Categories in first-seen order without repeats (two dogs need one text query)."""
    return list(dict.fromkeys(categories))


def _postprocess(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, names: Sequence[str], opts: DetectorOptions
) -> Detections:
    """NMS per category and top-k; ``boxes`` are pixel xyxy of one image."""
    from torchvision.ops import batched_nms

    out: Detections = {name: [] for name in names}
    real = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)  # clipping can flatten a box
    boxes, scores, labels = boxes[real], scores[real], labels[real]
    if boxes.numel() == 0:
        return out
    keep = batched_nms(boxes.float(), scores.float(), labels, opts.nms_iou) if opts.nms_iou < 1 else torch.argsort(scores, descending=True)
    boxes, scores, labels = boxes[keep].tolist(), scores[keep].tolist(), labels[keep].tolist()
    for box, score, label in zip(boxes, scores, labels, strict=True):
        bucket = out[names[label]]
        if len(bucket) < opts.max_per_category:
            bucket.append(Detection(box=tuple(float(v) for v in box), score=float(score)))
    return out


def _clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    limits = torch.tensor([width, height, width, height], device=boxes.device, dtype=boxes.dtype)
    return torch.minimum(boxes.clamp(min=0), limits)


def _cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


class Detector:
    """Base: ``detect`` splits the batch into chunks and calls ``_detect_chunk``."""

    def __init__(self, opts: DetectorOptions):
        self.opts = opts

    def detect(
        self,
        images: Sequence[np.ndarray],
        categories: Sequence[Sequence[str]],
        hints: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[Detections]:
        """Detect ``categories[i]`` in ``images[i]`` for every image; ``hints`` only feed the fixed kind."""
        if len(images) != len(categories):
            raise ValueError(f"{len(images)} images but {len(categories)} category lists")
        hints = list(hints) if hints is not None else [None] * len(images)
        # Only images of one size share a forward pass: padding a batch to its largest image
        # changes what DETR-style detectors see, and a sample's boxes must not depend on which
        # other samples it was batched with. (Generated images of a rollout share one size.)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(tuple(image.shape[:2]), []).append(i)
        out: list[Detections | None] = [None] * len(images)
        step = self.opts.batch_size
        for indices in groups.values():
            for start in range(0, len(indices), step):
                chunk = indices[start : start + step]
                found = self._detect_chunk(
                    [images[i] for i in chunk], [categories[i] for i in chunk], [hints[i] for i in chunk]
                )
                for i, result in zip(chunk, found, strict=True):
                    out[i] = result
        return out  # type: ignore[return-value]

    def _detect_chunk(
        self, images: Sequence[np.ndarray], categories: Sequence[Sequence[str]], hints: Sequence[Mapping[str, Any] | None]
    ) -> list[Detections]:
        raise NotImplementedError


class FixedDetector(Detector):
    """Test/reproduction tool: returns the boxes given in ``hint["boxes"]``, no model involved."""

    def _detect_chunk(self, images, categories, hints):
        out = []
        for image, names, hint in zip(images, categories, hints, strict=True):
            given = (hint or {}).get("boxes") or {}
            if not isinstance(given, Mapping):
                raise ValueError("fixed detector: metadata boxes must map category -> list of [x0, y0, x1, y1, (score)]")
            height, width = image.shape[:2]
            found: Detections = {}
            for name in unique(names):
                rows = []
                for row in given.get(name, []):
                    if len(row) not in (4, 5):
                        raise ValueError(f"fixed detector: box {row!r} for {name!r} needs 4 coordinates and an optional score")
                    x0, y0, x1, y1 = (float(v) for v in row[:4])
                    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
                        raise ValueError(f"fixed detector: box {row!r} for {name!r} is not inside the {width}x{height} image")
                    score = float(row[4]) if len(row) == 5 else 1.0
                    if score >= self.opts.threshold():
                        rows.append(Detection(box=(x0, y0, x1, y1), score=score))
                found[name] = sorted(rows, key=lambda d: -d.score)[: self.opts.max_per_category]
            out.append(found)
        return out


class _ModelDetector(Detector):
    def __init__(self, opts: DetectorOptions, device: torch.device, dtype: torch.dtype):
        super().__init__(opts)
        self.device, self.dtype = device, dtype
        self.model_path = opts.model or DEFAULT_MODELS[opts.kind]


    def _pixels(self, images: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """Resize/normalise on the model's device: uint8 goes over, the image processor runs there."""
        tensors = to_device_uint8(images, self.device)  # (3, H, W): no guessing which axis holds channels
        return self.processor.image_processor(images=tensors, return_tensors="pt", device=str(self.device))


class GroundingDinoDetector(_ModelDetector):
    """Grounding DINO through transformers, with the paper's box/text thresholds."""

    def __init__(self, opts: DetectorOptions, device: torch.device, dtype: torch.dtype):
        super().__init__(opts, device, dtype)
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        self.processor = AutoProcessor.from_pretrained(self.model_path)
        self.model = GroundingDinoForObjectDetection.from_pretrained(self.model_path, dtype=dtype).to(device).eval()

    @staticmethod
    def caption(names: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
        """``"dog. cup."`` and each category's character span in it (lower-case, as GD expects)."""
        text, spans = "", []
        for name in names:
            start = len(text)
            text += name.lower().strip()
            spans.append((start, len(text)))
            text += ". "
        return text.strip(), spans

    @torch.inference_mode()
    def _detect_chunk(self, images, categories, hints):
        names = [unique(c) for c in categories]
        captions = [self.caption(n) for n in names]
        max_len = self.model.config.max_text_len
        text = self.processor.tokenizer(
            [c for c, _ in captions], padding=True, truncation=True, max_length=max_len,
            return_offsets_mapping=True, return_tensors="pt",
        )
        offsets = text.pop("offset_mapping")
        pixels = self._pixels(images)
        inputs = {k: v.to(self.device) for k, v in {**text, **pixels}.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        outputs = self.model(**inputs)
        probs = outputs.logits.float().sigmoid()[..., : offsets.shape[1]]  # (B, Q, T)
        results = []
        for b, (image, image_names) in enumerate(zip(images, names, strict=True)):
            spans = captions[b][1]
            # token -> category membership from character offsets ([CLS]/[SEP]/"." belong to none)
            member = torch.zeros(len(spans), offsets.shape[1], dtype=torch.bool)
            for c, (lo, hi) in enumerate(spans):
                starts, ends = offsets[b, :, 0], offsets[b, :, 1]
                member[c] = (ends > starts) & (starts >= lo) & (ends <= hi)
            member = member.to(probs.device)
            token_mask = inputs["attention_mask"][b].bool()
            box_score = probs[b].masked_fill(~token_mask, 0).max(-1).values  # (Q,)
            per_cat = torch.stack([probs[b].masked_fill(~m, 0).max(-1).values for m in member], -1)  # (Q, C)
            cat_score, label = per_cat.max(-1)
            keep = (box_score > self.opts.threshold()) & (cat_score > self.opts.text_threshold)
            height, width = image.shape[:2]
            scale = torch.tensor([width, height, width, height], device=probs.device)
            boxes = _clip_boxes(_cxcywh_to_xyxy(outputs.pred_boxes[b].float()) * scale, height, width)
            results.append(_postprocess(boxes[keep], cat_score[keep], label[keep], image_names, self.opts))
        return results


class Owlv2Detector(_ModelDetector):
    """OWLv2 through transformers: one text query per category, sigmoid scores per patch box."""

    def __init__(self, opts: DetectorOptions, device: torch.device, dtype: torch.dtype):
        super().__init__(opts, device, dtype)
        from transformers import AutoProcessor, Owlv2ForObjectDetection

        self.processor = AutoProcessor.from_pretrained(self.model_path)
        self.model = Owlv2ForObjectDetection.from_pretrained(self.model_path, dtype=dtype).to(device).eval()

    @torch.inference_mode()
    def _detect_chunk(self, images, categories, hints):
        names = [unique(c) for c in categories]
        queries = [[self.opts.query_template.format(n) for n in image_names] for image_names in names]
        text = self.processor(text=queries, return_tensors="pt", padding="max_length", truncation=True)
        inputs = {k: v.to(self.device) for k, v in {**text, **self._pixels(images)}.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        outputs = self.model(**inputs)
        probs = outputs.logits.float().sigmoid()  # (B, P, max queries); padded queries are ignored below
        results = []
        for b, (image, image_names) in enumerate(zip(images, names, strict=True)):
            height, width = image.shape[:2]
            side = max(height, width)  # OWLv2 pads to a square at the bottom/right; boxes are relative to it
            boxes = _clip_boxes(_cxcywh_to_xyxy(outputs.pred_boxes[b].float()) * side, height, width)
            scores = probs[b, :, : len(image_names)]  # (P, C)
            patch, label = torch.nonzero(scores > self.opts.threshold(), as_tuple=True)
            results.append(_postprocess(boxes[patch], scores[patch, label], label, image_names, self.opts))
        return results


def build_detector(opts: DetectorOptions, device: torch.device, dtype: torch.dtype) -> Detector:
    """Instantiate (and load) the detector ``opts`` names."""
    if opts.kind == "fixed":
        return FixedDetector(opts)
    if opts.kind == "grounding_dino":
        return GroundingDinoDetector(opts, device, dtype)
    if opts.kind == "owlv2":
        return Owlv2Detector(opts, device, dtype)
    raise ValueError(f"unknown detector kind {opts.kind!r}")
