"""PickScore and HPSv2 on tiny checkpoints: the contract, and agreement with the models' own forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reward_server.config import RewardSpec
from reward_server.rewards.hpsv2 import HpsV2Reward
from shared.protocol import Sample
from tests.reward_contract import RewardContract


class TestPickScore(RewardContract):
    reward_name = "pickscore"


class TestHpsV2(RewardContract):
    reward_name = "hpsv2"


def samples(size=32):
    rng = np.random.default_rng(3)
    prompts = ["a dog wearing a red hat", "a cup next to a cat", "a dog wearing a red hat"]
    return [Sample(image=rng.integers(0, 256, (size, size, 3), dtype=np.uint8), prompt=p) for p in prompts]


def test_pickscore_is_the_models_logits_per_image(load_tiny_reward):
    reward = load_tiny_reward("pickscore")
    batch = samples()
    got = [r.score for r in reward.score(batch)]
    model = reward.embedder.model
    from reward_server.models.preprocess import preprocess_batch

    # the same preprocessing, but the logits of CLIPModel.forward (its own projection, norm and scale)

    pix = preprocess_batch([s.image for s in batch], reward.embedder.preprocess, reward.embedder.device)
    tokens = reward.tokenizer([s.prompt for s in batch], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(pixel_values=pix, **tokens).logits_per_image
    np.testing.assert_allclose(got, torch.diagonal(logits).numpy(), rtol=1e-4, atol=1e-4)
    assert reward.options.mode == "logit" and reward.logit_scale > 1


def test_hpsv2_matches_open_clip_forward(load_tiny_reward):
    import open_clip

    reward = load_tiny_reward("hpsv2")
    batch = samples(size=32)  # the tiny model's input size: open_clip's PIL transform is then exact
    got = [r.score for r in reward.score(batch)]
    _, _, preprocess = open_clip.create_model_and_transforms(reward.options.architecture, pretrained=None)
    from PIL import Image

    images = torch.stack([preprocess(Image.fromarray(s.image)) for s in batch])
    with torch.no_grad():
        image_f, text_f, _ = reward.model(images, reward.tokenizer([s.prompt for s in batch]))
    np.testing.assert_allclose(got, (image_f * text_f).sum(-1).numpy(), rtol=1e-4, atol=1e-5)


def test_hpsv2_refuses_pickled_objects_and_wrong_weights(tmp_path, tiny_server_config):
    spec = tiny_server_config.rewards["hpsv2"]

    import argparse

    torch.save({"state_dict": {"x": argparse.Namespace(run="code")}}, tmp_path / "evil.pt")  # an arbitrary object
    with pytest.raises(ValueError, match="refusing to unpickle"):
        HpsV2Reward("h", spec.model_copy(update={"model": str(tmp_path / "evil.pt")})).load()
    torch.save({"state_dict": {"visual.proj": torch.zeros(2)}}, tmp_path / "wrong.pt")
    with pytest.raises(RuntimeError, match="Missing key"):
        HpsV2Reward("h", spec.model_copy(update={"model": str(tmp_path / "wrong.pt")})).load()
    with pytest.raises(FileNotFoundError, match="HPS_v2"):
        HpsV2Reward("h", RewardSpec(type="hpsv2", model=str(tmp_path / "none.pt"), options=spec.options)).load()
