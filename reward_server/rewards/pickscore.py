"""``pickscore``: PickScore (Kirstain et al. 2023), a CLIP-H fine-tuned on human preferences.

Score = ``logit_scale.exp() * cos(image, prompt)`` of the ``CLIPModel`` (about 18-23 for real
images with yuvalkirstain/PickScore_v1); it is ``clip_t`` in ``logit`` mode with PickScore's
defaults. Checkpoint: ``model: yuvalkirstain/PickScore_v1`` with
``options.tokenizer: laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (PickScore_v1 ships no tokenizer).
``options.mode: cosine`` reports the bare cosine instead.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from reward_server.rewards import register
from reward_server.rewards.clip_t import ClipTOptions, ClipTReward

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScoreOptions(ClipTOptions):
    mode: Literal["cosine", "clipscore", "logit"] = Field(
        default="logit", description="logit: logit_scale.exp() * cos (PickScore as published); cosine: the bare cosine"
    )


@register
class PickScoreReward(ClipTReward):
    """Human-preference score of a CLIP-H model fine-tuned on Pick-a-Pic."""

    type_name = "pickscore"
    description = "PickScore: logit_scale * cos(image, prompt) of a preference-tuned CLIP-H"
    Options = PickScoreOptions

    def load(self) -> None:
        if self.spec.model is None:
            self.spec = self.spec.model_copy(update={"model": PICKSCORE_MODEL})
            if self.options.tokenizer is None:
                self.options = self.options.model_copy(update={"tokenizer": PICKSCORE_TOKENIZER})
        super().load()
