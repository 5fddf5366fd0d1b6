"""aesthetic: contract, the MLP against a hand-written forward pass, and safe head loading."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import CLIPModel

from reward_server.config import RewardSpec
from reward_server.models.aesthetic_head import AestheticMLP, load_head
from reward_server.models.preprocess import CLIP_MEAN, CLIP_STD, Preprocess, preprocess_batch
from reward_server.rewards.aesthetic import AestheticReward
from tests.reward_contract import RewardContract, scores_of

PUBLIC_KEYS = {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}


def build(model: str, head: str | Path) -> AestheticReward:
    reward = AestheticReward(
        "aesthetic_test", RewardSpec(type="aesthetic", model=model, device="cpu", options={"head": str(head)})
    )
    reward.load()
    return reward


class TestAesthetic(RewardContract):
    reward_name = "aesthetic"

    def test_head_has_public_layout(self, reward) -> None:
        state = load_file(reward.options.head)
        assert set(state) == PUBLIC_KEYS
        assert [state[f"layers.{i}.weight"].shape[0] for i in (0, 2, 4, 6, 7)] == [1024, 128, 64, 16, 1]

    def test_equals_manual_forward(self, reward) -> None:
        samples = self.make_samples(5, sizes=[(48, 48), (64, 40)])
        model = CLIPModel.from_pretrained(reward.spec.model).eval()
        size = model.config.vision_config.image_size
        spec = Preprocess(resize=size, crop=size, mean=CLIP_MEAN, std=CLIP_STD)
        state = load_file(reward.options.head)
        with torch.no_grad():
            pixels = preprocess_batch([s.image for s in samples], spec, torch.device("cpu"))
            x = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
            for i in (0, 2, 4, 6, 7):  # linear layers only: the LAION head has no activations
                x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
        np.testing.assert_allclose(scores_of(reward.score(samples)), x.squeeze(-1).numpy(), atol=1e-5)

    def test_pth_and_safetensors_agree(self, reward) -> None:
        pth = Path(reward.options.head).with_suffix(".pth")
        samples = self.make_samples(3)
        np.testing.assert_array_equal(
            scores_of(build(reward.spec.model, pth).score(samples)), scores_of(reward.score(samples))
        )

    def test_relative_head_found_inside_model_folder(self, reward, tmp_path: Path) -> None:
        model_dir = tmp_path / "clip"
        shutil.copytree(reward.spec.model, model_dir)
        shutil.copy(reward.options.head, model_dir / "head.safetensors")
        samples = self.make_samples(2)
        np.testing.assert_array_equal(
            scores_of(build(str(model_dir), "head.safetensors").score(samples)),
            scores_of(reward.score(samples)),
        )

    def test_missing_head_names_the_option(self, reward) -> None:
        with pytest.raises(FileNotFoundError, match=r"no_such_head\.pth"):
            build(reward.spec.model, "no_such_head.pth")

    def test_head_of_wrong_width_is_refused(self, reward, tmp_path: Path) -> None:
        path = tmp_path / "wide.pth"
        torch.save(AestheticMLP(48).state_dict(), path)
        with pytest.raises(ValueError, match="48-d"):
            build(reward.spec.model, path)


class Payload:
    """Anything that is not a tensor: a weights_only load must refuse to build it."""


def test_pth_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"layers.0.weight": torch.zeros(2, 2), "payload": Payload()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_head(path)


def test_state_dict_with_wrong_keys_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    state = {k.replace("layers", "mlp"): v for k, v in AestheticMLP(8).state_dict().items()}
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"layers\.0\.weight"):
        load_head(path)
