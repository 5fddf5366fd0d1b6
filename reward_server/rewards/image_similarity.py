"""``image_similarity``: whole-image similarity of the generated image to each reference (DINO-I / CLIP-I).

The score is the mean over the sample's reference images of the cosine similarity of the
embeddings. ``backbone: dino`` is the DINO-I metric of personalisation papers (DINO v1 ViT-S/16,
e.g. ``facebook/dino-vits16``; resize 256 bicubic, centre crop 224); ``clip`` gives CLIP-I
(e.g. ``openai/clip-vit-large-patch14``); ``dinov2`` takes e.g. ``facebook/dinov2-base``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from reward_server.rewards import register
from reward_server.rewards.base import REFERENCES, Reward, ScoreResult
from shared.config import StrictModel
from shared.protocol import Sample


class ImageSimilarityOptions(StrictModel):
    backbone: Literal["dino", "dinov2", "clip"] = Field(
        default="dino", description="embedder: DINO v1 ViTModel, Dinov2Model or a CLIPModel's image tower"
    )


@register
class ImageSimilarityReward(Reward):
    """Mean cosine similarity between the image and its subjects' reference images."""

    type_name = "image_similarity"
    description = "whole-image similarity to each reference image (DINO-I / CLIP-I), mean over references"
    inputs = frozenset({REFERENCES})
    Options = ImageSimilarityOptions

    def load(self) -> None:
        from reward_server.models.device import resolve_device, resolve_dtype
        from reward_server.models.embedders import ImageEmbedder

        if not self.spec.model:
            raise ValueError(f"reward {self.name!r} needs `model:` (a {self.options.backbone} checkpoint)")
        device = resolve_device(self.spec.device)
        dtype = resolve_dtype(self.spec.dtype, device)
        self.embedder = ImageEmbedder(self.spec.model, self.options.backbone, device, dtype)

    def score(self, samples: Sequence[Sample]) -> list[ScoreResult]:
        if not samples:
            return []
        references = [[s.reference for s in sample.subjects if s.reference is not None] for sample in samples]
        # One embedding pass for the generated images and every reference of the batch.
        flat = [s.image for s in samples] + [ref for refs in references for ref in refs]
        embeddings = self.embedder.embed(flat)
        generated, refs_emb = embeddings[: len(samples)], embeddings[len(samples) :]
        results, start = [], 0
        for i, refs in enumerate(references):
            if not refs:
                results.append(ScoreResult.failed("no reference images to compare with"))
                continue
            sims = (refs_emb[start : start + len(refs)] @ generated[i]).tolist()
            start += len(refs)
            results.append(ScoreResult(sum(sims) / len(sims), details={"per_reference": sims}))
        return results
