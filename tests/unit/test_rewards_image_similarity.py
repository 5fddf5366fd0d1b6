"""image_similarity (DINO-I, CLIP-I, DINOv2): contract, identity, and a manual computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Dinov2Model, ViTModel

from reward_server.config import RewardSpec
from reward_server.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, preprocess_batch
from reward_server.rewards.image_similarity import ImageSimilarityReward
from reward_server.tiny.vision import DINOV2_DIR
from shared.protocol import Sample, Subject
from tests.reward_contract import RewardContract, random_image


def manual_dino_cls(model, images: list[np.ndarray]) -> torch.Tensor:
    """CLS embeddings with the DINO protocol scaled to the checkpoint: resize crop*256/224, crop, ImageNet stats."""
    size = model.config.image_size
    spec = Preprocess(resize=round(size * 256 / 224), crop=size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    with torch.no_grad():
        rows = [
            model(pixel_values=preprocess_batch([im], spec, torch.device("cpu"))).last_hidden_state[0, 0]
            for im in images
        ]
    return F.normalize(torch.stack(rows), dim=-1)


class SimilarityChecks(RewardContract):
    """Checks shared by every backbone."""

    def test_identical_image_scores_one_and_a_different_one_less(self, reward) -> None:
        rng = np.random.default_rng(7)
        image, other = random_image(rng, 48, 48), random_image(rng, 48, 48)
        same, differs = reward.score(
            [
                Sample(image=image, subjects=(Subject("dog", image.copy()),)),
                Sample(image=image, subjects=(Subject("dog", other),)),
            ]
        )
        assert same.score == pytest.approx(1.0, abs=1e-5)
        assert differs.score < same.score - 1e-3

    def test_score_is_mean_of_per_reference_details(self, reward) -> None:
        samples = self.make_samples(3, sizes=[(48, 48), (64, 40)])
        for sample, result in zip(samples, reward.score(samples), strict=True):
            per_ref = result.details["per_reference"]
            assert len(per_ref) == len(sample.subjects)
            assert result.score == pytest.approx(float(np.mean(per_ref)), abs=1e-7)
            alone = [
                reward.score([Sample(image=sample.image, subjects=(s,))])[0].score for s in sample.subjects
            ]
            np.testing.assert_allclose(per_ref, alone, atol=1e-5)

    def test_sample_without_references_fails_alone(self, reward) -> None:
        good = self.make_samples(1)[0]
        results = reward.score([Sample(image=good.image, subjects=(Subject("dog"),)), good])
        assert results[0].score is None and "reference" in results[0].error
        assert results[1].score == pytest.approx(reward.score([good])[0].score, abs=1e-5)


class TestDinoI(SimilarityChecks):
    reward_name = "dino_i"

    def test_equals_manual_dino_cls_cosine(self, reward) -> None:
        samples = self.make_samples(3, sizes=[(48, 48), (40, 72)])
        model = ViTModel.from_pretrained(reward.spec.model, add_pooling_layer=False).eval()
        for sample, result in zip(samples, reward.score(samples), strict=True):
            emb = manual_dino_cls(model, [sample.image, *(s.reference for s in sample.subjects)])
            np.testing.assert_allclose(result.details["per_reference"], (emb[1:] @ emb[0]).numpy(), atol=1e-5)


class TestClipI(SimilarityChecks):
    reward_name = "clip_i"

    def test_uses_the_clip_projection(self, reward) -> None:
        assert reward.embedder.dim == reward.embedder.model.config.projection_dim
        assert reward.embedder.preprocess.resize == reward.embedder.preprocess.crop  # CLIP: no 256/224 margin


def test_dinov2_backbone(tiny_config: Path) -> None:
    path = str(tiny_config.parent / DINOV2_DIR)
    reward = ImageSimilarityReward(
        "dinov2_i",
        RewardSpec(type="image_similarity", model=path, device="cpu", options={"backbone": "dinov2"}),
    )
    reward.load()
    rng = np.random.default_rng(3)
    image, ref = random_image(rng, 40, 56), random_image(rng, 64, 48)
    same, other = reward.score(
        [
            Sample(image=image, subjects=(Subject("cup", image),)),
            Sample(image=image, subjects=(Subject("cup", ref),)),
        ]
    )
    assert same.score == pytest.approx(1.0, abs=1e-5)
    emb = manual_dino_cls(Dinov2Model.from_pretrained(path).eval(), [image, ref])
    assert other.score == pytest.approx(float(emb[0] @ emb[1]), abs=1e-5)


def test_unknown_backbone_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="backbone"):
        ImageSimilarityReward(
            "x", RewardSpec(type="image_similarity", model="m", options={"backbone": "dinov3"})
        )
