"""clip_t: contract, and the numbers against a manual computation with the same checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, CLIPModel

from reward_server.config import RewardSpec
from reward_server.models.preprocess import CLIP_MEAN, CLIP_STD, Preprocess, preprocess_batch
from reward_server.rewards.clip_t import ClipTReward
from shared.protocol import Sample
from tests.reward_contract import RewardContract, scores_of


def with_mode(reward: ClipTReward, mode: str) -> ClipTReward:
    """The same checkpoint as ``reward`` in another scoring convention."""
    spec = reward.spec.model_copy(update={"options": {**reward.spec.options, "mode": mode}})
    other = ClipTReward(f"clip_t_{mode}", RewardSpec.model_validate(spec.model_dump()))
    other.load()
    return other


def manual_cosines(model_path: str, samples: list[Sample]) -> np.ndarray:
    """cos(text, image) computed one sample at a time, text padded to 77 tokens."""
    model = CLIPModel.from_pretrained(model_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    size = model.config.vision_config.image_size
    spec = Preprocess(resize=size, crop=size, mean=CLIP_MEAN, std=CLIP_STD)
    out = []
    with torch.no_grad():
        for sample in samples:
            tokens = tokenizer([sample.prompt], padding="max_length", max_length=77, return_tensors="pt")
            text = model.get_text_features(**tokens).pooler_output
            pixels = preprocess_batch([sample.image], spec, torch.device("cpu"))
            image = model.get_image_features(pixel_values=pixels).pooler_output
            out.append(float(F.cosine_similarity(text, image).item()))
    return np.array(out)


class TestClipT(RewardContract):
    reward_name = "clip_t"

    def test_equals_manual_cosine(self, reward) -> None:
        samples = self.make_samples(6, sizes=[(48, 48), (64, 40), (40, 72)])
        np.testing.assert_allclose(
            scores_of(reward.score(samples)), manual_cosines(reward.spec.model, samples), atol=1e-5
        )

    def test_prompt_changes_score(self, reward) -> None:
        image = self.make_samples(1)[0].image
        a, b = reward.score(
            [Sample(image=image, prompt="a red dog"), Sample(image=image, prompt="a blue robot")]
        )
        assert abs(a.score - b.score) > 1e-4

    def test_clipscore_clamps_negatives(self, reward) -> None:
        samples = self.make_samples(10, sizes=[(48, 48), (64, 40)])
        cosines = scores_of(reward.score(samples))
        assert (cosines < 0).any() and (cosines > 0).any(), "fixture must give cosines of both signs"
        clipscore = scores_of(with_mode(reward, "clipscore").score(samples))
        np.testing.assert_allclose(clipscore, 2.5 * np.maximum(cosines, 0.0), atol=1e-6)
        assert (clipscore[cosines < 0] == 0).all()

    def test_logit_mode_scales_by_logit_scale(self, reward) -> None:
        samples = self.make_samples(3)
        cosines = scores_of(reward.score(samples))
        logit = with_mode(reward, "logit")
        scale = CLIPModel.from_pretrained(reward.spec.model).logit_scale.exp().item()
        assert scale == pytest.approx(logit.logit_scale) and scale > 1.5
        np.testing.assert_allclose(scores_of(logit.score(samples)), scale * cosines, rtol=1e-5)

    def test_details_carry_cosine(self, reward) -> None:
        results = reward.score(self.make_samples(2))
        assert [r.details["cosine"] for r in results] == [r.score for r in results]

    def test_long_prompt_is_truncated_not_refused(self, reward) -> None:
        image = self.make_samples(1)[0].image
        long = " ".join(["a dog wearing a red hat"] * 60)
        truncated = reward.tokenizer(long, truncation=True, max_length=77)["input_ids"]
        assert len(truncated) == 77
        result = reward.score([Sample(image=image, prompt=long)])[0]
        assert result.error is None and np.isfinite(result.score)

    def test_unknown_mode_is_a_config_error(self, reward) -> None:
        spec = RewardSpec(type="clip_t", model=reward.spec.model, options={"mode": "cosin"})
        with pytest.raises(ValueError, match="mode"):
            ClipTReward("bad", spec)
