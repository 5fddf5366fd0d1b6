"""HPSv3 on the tiny checkpoint: the contract, and agreement with the authors' package.

``tests/fixtures/hpsv3/reference.json`` holds what ``hpsv3==1.0.0`` (transformers 4.45.2, run by
``scripts/hpsv3_reference.sh`` in a throw-away virtualenv) computed on ``psr make-tiny``'s tiny
HPSv3 for the fixture images: mu/sigma, the token ids of every prompt and the image grids.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reward_server.models.hpsv3 import INSTRUCTION, PIXELS, REWARD_SUFFIX, smart_resize
from shared.protocol import Sample
from tests.reward_contract import RewardContract

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hpsv3"
REFERENCE = json.loads((FIXTURES / "reference.json").read_text())


def _script():
    spec = importlib.util.spec_from_file_location("hpsv3_reference", FIXTURES.parents[2] / "scripts" / "hpsv3_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fixture_samples() -> list[Sample]:
    images = [np.asarray(Image.open(FIXTURES / f"image_{i}.png").convert("RGB")) for i in range(len(REFERENCE["prompts"]))]
    return [Sample(image=image, prompt=prompt) for image, prompt in zip(images, REFERENCE["prompts"], strict=True)]


class TestHpsV3(RewardContract):
    reward_name = "hpsv3"


@pytest.fixture(scope="module")
def hpsv3(load_tiny_reward):
    reward = load_tiny_reward("hpsv3")
    assert _script().tensor_digest(Path(reward.spec.model)) == REFERENCE["checkpoint_sha256"], (
        "psr make-tiny's HPSv3 weights changed: rerun scripts/hpsv3_reference.sh to refresh the fixture"
    )
    return reward


def test_scores_equal_the_authors_package(hpsv3):
    """mu and sigma within 1e-5 of hpsv3==1.0.0's reward() on the same weights (measured: mu 5.4e-7, sigma 6.7e-7 with its rounding to 1e-6)."""
    results = hpsv3.score(fixture_samples())
    mu = np.array([r.score for r in results])
    sigma = np.array([r.details["sigma"] for r in results])
    expected = np.array(REFERENCE["rewards_batched"])
    np.testing.assert_allclose(mu, expected[:, 0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(sigma, expected[:, 1], rtol=0, atol=1e-5)
    assert np.ptp(expected[:, 0]) > 0.05  # the fixture tells samples apart, so agreement means something


def test_batched_reference_equals_alone():
    """The authors' code gives each sample the same score alone and in a batch (right padding)."""
    np.testing.assert_allclose(REFERENCE["rewards_batched"], REFERENCE["rewards_alone"], atol=1e-5)


def test_tokens_and_image_grid_equal_the_authors(hpsv3):
    samples = fixture_samples()
    batch = hpsv3.model.inputs([s.image for s in samples], [s.prompt for s in samples])
    ids = [[int(t) for t, m in zip(row, mask, strict=True) if m] for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]
    assert ids == REFERENCE["token_ids"]
    assert batch["image_grid_thw"].tolist() == REFERENCE["image_grid_thw"]
    assert float(batch["pixel_values"].double().sum()) == pytest.approx(REFERENCE["pixel_values_sum"], rel=1e-5)


def test_template_is_the_authors_verbatim():
    assert REFERENCE["template"]["instruction"] == INSTRUCTION
    assert REFERENCE["template"]["suffix"] == REWARD_SUFFIX


@pytest.mark.parametrize(("size", "expected"), [((64, 64), (448, 448)), ((48, 96), (336, 644)), ((1000, 4), None)])
def test_smart_resize_keeps_the_pixel_budget(size, expected):
    """Sides are multiples of 28 and the area is the 256*28*28 budget rounded to whole patches."""
    if expected is None:
        with pytest.raises(ValueError, match="aspect"):
            smart_resize(*size)
        return
    h, w = smart_resize(*size)
    assert (h, w) == expected and h % 28 == 0 and w % 28 == 0
    assert abs(h * w - PIXELS) <= 28 * max(h, w)


@pytest.mark.parametrize("token", ["<|Reward|>", "<|image_pad|>"])
def test_a_prompt_holding_a_template_token_fails_alone(hpsv3, token):
    """Such a prompt broke the template (two reward tokens / more image placeholders than images) and
    made the whole batch raise; now that sample fails with the reason and the others keep their scores."""
    samples = fixture_samples()[:3]
    bad = Sample(image=samples[1].image, prompt=f"{samples[1].prompt} {token}")
    results = hpsv3.score([samples[0], bad, samples[2]])
    assert results[1].score is None and token in results[1].error
    expected = np.array(REFERENCE["rewards_batched"])[[0, 2], 0]
    np.testing.assert_allclose([results[0].score, results[2].score], expected, rtol=0, atol=1e-5)
