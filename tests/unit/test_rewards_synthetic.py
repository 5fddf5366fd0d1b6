"""The model-free rewards: contract plus their own arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from reward_server.config import RewardSpec
from reward_server.rewards.synthetic import FixedCostReward
from shared.protocol import Sample
from tests.reward_contract import RewardContract


class TestBrightness(RewardContract):
    reward_name = "brightness"

    def test_value(self, reward) -> None:
        image = np.zeros((4, 4, 3), np.uint8)
        image[:2] = 255
        assert reward.score([Sample(image=image)])[0].score == pytest.approx(0.5)


class TestRed(RewardContract):
    reward_name = "red"

    def test_pure_red_scores_one_and_cyan_zero(self, reward) -> None:
        red = np.zeros((4, 4, 3), np.uint8)
        red[..., 0] = 255
        cyan = 255 - red
        scores = [r.score for r in reward.score([Sample(image=red), Sample(image=cyan)])]
        assert scores[0] == pytest.approx(1.0)
        assert scores[1] == pytest.approx(0.0, abs=1e-6)  # cyan is the farthest colour from red


def test_fixed_cost_fails_and_errors_on_request() -> None:
    reward = FixedCostReward(
        "slow", RewardSpec(type="fixed_cost", options={"fail_on": "boom", "error_on": "bad"})
    )
    reward.load()
    image = np.zeros((2, 2, 3), np.uint8)
    results = reward.score([Sample(image=image, prompt="abc"), Sample(image=image, prompt="a bad one")])
    assert results[0].score == pytest.approx(0.3) and results[1].score is None and "bad" in results[1].error
    with pytest.raises(RuntimeError, match="boom"):
        reward.score([Sample(image=image, prompt="boom")])
