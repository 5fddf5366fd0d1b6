"""``clip_t``: text-image alignment with a CLIP model (CLIPScore, cosine, or PickScore-style logits).

Works with any transformers ``CLIPModel`` checkpoint and the tokenizer saved beside it, e.g.
``openai/clip-vit-large-patch14`` (mode ``clipscore`` or ``cosine``) or
``yuvalkirstain/PickScore_v1`` (mode ``logit``; PickScore uses the tokenizer of
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``: give that as ``tokenizer`` when the checkpoint
has no tokenizer files of its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from reward_server.rewards import register
from reward_server.rewards.base import PROMPT, Reward, ScoreResult
from shared.config import MODEL_REF, StrictModel
from shared.protocol import Sample


class ClipTOptions(StrictModel):
    mode: Literal["cosine", "clipscore", "logit"] = Field(
        default="cosine",
        description="cosine: cos(text, image) in [-1, 1]; clipscore: 2.5 * max(cos, 0) (Hessel et al.); "
        "logit: model.logit_scale.exp() * cos (PickScore convention)",
    )
    tokenizer: str | None = Field(
        default=None, description="tokenizer path or hub id; default: the model's", json_schema_extra=MODEL_REF
    )
    max_length: int | None = Field(
        default=None, ge=2, description="token limit; default: the text tower's position count (77 for CLIP)"
    )


@register
class ClipTReward(Reward):
    """Cosine similarity of CLIP text and image embeddings, in the chosen convention."""

    type_name = "clip_t"
    description = "text-image alignment with a CLIP model (cosine, CLIPScore or PickScore-style logit)"
    inputs = frozenset({PROMPT})
    Options = ClipTOptions

    def load(self) -> None:
        from transformers import AutoTokenizer

        from reward_server.models.device import resolve_device, resolve_dtype
        from reward_server.models.embedders import ImageEmbedder

        device = resolve_device(self.spec.device)
        if not self.spec.model:
            raise ValueError(f"reward {self.name!r} needs `model:` (a CLIPModel checkpoint)")
        self.embedder = ImageEmbedder(self.spec.model, "clip", device, resolve_dtype(self.spec.dtype, device))
        self.tokenizer = AutoTokenizer.from_pretrained(self.options.tokenizer or self.spec.model)
        self.max_length = (
            self.options.max_length or self.embedder.model.config.text_config.max_position_embeddings
        )
        self.logit_scale = float(self.embedder.model.logit_scale.detach().exp())

    def embed_text(self, prompts: Sequence[str]):
        """L2-normalised float32 text embeddings, one row per prompt."""
        import torch
        import torch.nn.functional as F

        tokens = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.embedder.device)
        with torch.inference_mode():
            features = self.embedder.model.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            )
        return F.normalize(getattr(features, "pooler_output", features).float(), dim=-1)

    def convert(self, cosine: float) -> float:
        """Map a cosine similarity to the configured score convention."""
        if self.options.mode == "clipscore":
            return 2.5 * max(cosine, 0.0)
        if self.options.mode == "logit":
            return self.logit_scale * cosine
        return cosine

    def score(self, samples: Sequence[Sample]) -> list[ScoreResult]:
        if not samples:
            return []
        prompts = [s.prompt for s in samples]
        unique = list(dict.fromkeys(prompts))  # GRPO groups share prompts: one text row each
        row = {p: i for i, p in enumerate(unique)}
        text = self.embed_text(unique)[[row[p] for p in prompts]]
        image = self.embedder.embed([s.image for s in samples])
        cosines = (image * text).sum(dim=-1).tolist()
        return [ScoreResult(self.convert(c), details={"cosine": c}) for c in cosines]
