"""The in-process judge's score is the README's rule, computed here independently:

P(d), d = 0..9: the first token's probability after "Score: ". Qwen spells 10 as "1" "0", so the
judge takes q, the next-token distribution after "Score: 1"; of what may follow "1", only "0"
(the answer 10) and a non-digit (the answer 1) are valid scores, so
P(10) = P("1") * q("0") / (1 - sum_{d=1..9} q(d)) and P(1) = P("1") - P(10).
Score = sum_k k P(k) / m with m = sum_{d=0..9} P(d); m < min_digit_mass is a failure.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

from reward_server.models.judge import TransformersJudge
from reward_server.rewards.vlm_judge import VlmJudgeReward
from shared.protocol import Sample, Subject


def readme_rule(first: np.ndarray, after_one: np.ndarray) -> tuple[float, float]:
    """(score on 0-10, digit mass) from the digits' probabilities at both steps (arrays of 10)."""
    p10 = first[1] * after_one[0] / (1.0 - after_one[1:].sum())
    probs = np.concatenate([first[:10], [p10]])
    probs[1] -= p10
    mass = first.sum()
    return float((probs * np.arange(11)).sum() / mass), float(mass)


class _Digits:
    """The judge's arithmetic without a model: token i is digit i, token 10 stands for "anything else"."""

    digit_ids: ClassVar[list[int]] = list(range(10))  # a list: torch indexes with it
    ten_id = None
    min_digit_mass = 0.5


def _dist(**probs: float) -> torch.Tensor:
    out = torch.zeros(11)
    for key, value in probs.items():
        out[10 if key == "other" else int(key[1:])] = value
    return out


@pytest.mark.parametrize("first, second, expected", [
    # a sharp judge: all on "1", then "0" or "2": "12" is no score, so the answer is 10
    (_dist(d1=1.0), _dist(d0=0.5, d2=0.5), 10.0),
    # half "1"-then-end (score 1), half "10"; 0.6 on "9"
    (_dist(d1=0.4, d9=0.6), _dist(d0=0.5, other=0.5), 0.6 * 9 + 0.2 * 1 + 0.2 * 10),
    (_dist(d1=0.6, d9=0.4), _dist(d0=0.3, d2=0.5, other=0.2), 0.24 * 1 + 0.36 * 10 + 0.4 * 9),
])
def test_hand_computed_distributions(first, second, expected):
    judgement = TransformersJudge._expected(_Digits(), first, second)
    assert judgement.score == pytest.approx(expected, abs=1e-6)
    assert judgement.score == pytest.approx(readme_rule(first[:10].numpy(), second[:10].numpy())[0], abs=1e-6)
    # the rule the README used to state, P(10) = P("1") * q("0"), differs by 0.16 and more on 0-1 here
    naive = float((first[:10] * torch.arange(10)).sum() + first[1] * second[0] * 9)
    if expected in (10.0, 0.24 * 1 + 0.36 * 10 + 0.4 * 9):
        assert abs(naive - expected) / 10 >= 0.16


def test_too_little_digit_mass_fails():
    judgement = TransformersJudge._expected(_Digits(), _dist(d3=0.2, other=0.8), _dist(d0=1.0))
    assert judgement.score is None and "digit probability 0.2 < 0.5" in judgement.error


def test_served_score_equals_the_rule_on_the_model_s_own_probabilities(tiny_server_config):
    """The probabilities come from plain forward passes of the tiny Qwen2.5-VL (not generate)."""
    spec = tiny_server_config.rewards["judge"]
    reward = VlmJudgeReward("judge", spec.model_copy(update={"options": {**spec.options, "min_digit_mass": 0.0}}))
    reward.load()
    rng = np.random.default_rng(0)
    sample = Sample(image=rng.integers(0, 256, (56, 56, 3), dtype=np.uint8), prompt="a dog wearing a hat",
                    subjects=(Subject("dog", rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)),))
    served = reward.score([sample])[0]

    judge = reward.judge
    tokenizer = judge.processor.tokenizer
    assert len(tokenizer.encode("10", add_special_tokens=False)) == 2  # the two-step case
    query = reward.query(sample)
    text = judge.prompt_text(query)
    inputs = judge.processor(text=[text], images=[query.images], return_tensors="pt")
    longer = judge.processor(text=[text + "1"], images=[query.images], return_tensors="pt")  # forced through "1"
    digits = [tokenizer.encode(str(d), add_special_tokens=False)[0] for d in range(10)]
    assert longer["input_ids"][0].tolist() == [*inputs["input_ids"][0].tolist(), digits[1]]
    with torch.no_grad():
        first = judge.model(**inputs).logits[0, -1].double().softmax(-1)
        second = judge.model(**longer).logits[0, -1].double().softmax(-1)
    expected, mass = readme_rule(first[digits].numpy(), second[digits].numpy())
    assert served.details["digit_mass"] == pytest.approx(mass, rel=1e-4)
    assert served.details["raw_score"] == pytest.approx(expected, abs=1e-3)
    assert served.score == pytest.approx(expected / 10, abs=1e-5)
