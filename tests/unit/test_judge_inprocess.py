"""The in-process judge on a real tiny Qwen2.5-VL, and the strict answer parser."""

from __future__ import annotations

import numpy as np
import pytest

from reward_server.config import RewardSpec
from reward_server.models.judge import parse_score
from reward_server.rewards.vlm_judge import VlmJudgeReward, load_templates
from reward_server.tiny.judge import write_qwen2_vl, write_qwen25_vl
from shared.protocol import Sample, Subject


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Score: 7", 7.0),
        ("score: 10", 10.0),
        ("The dog is there.\nScore: 3/10", 3.0),
        ("**Score:** 8", 8.0),
        ("Score: 0.", 0.0),
        ("Score: 6.5", 6.5),
    ],
)
def test_parse_score_accepts_the_format(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "I would give it a 7", "Score: eleven", "Score: 11", "Score: 7\nScore: 9", "7", "Score: -1", "Scores: 4 and 5"],
)
def test_parse_score_rejects_everything_else(text):
    assert isinstance(parse_score(text), str)


def sample(prompt="a dog wearing a red hat", task=None, refs=2):
    rng = np.random.default_rng(len(prompt))
    subjects = tuple(Subject(c, rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for c in ["dog", "hat"][:refs])
    return Sample(
        image=rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), prompt=prompt, subjects=subjects,
        metadata={"task": task} if task else {},
    )


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return str(write_qwen25_vl(tmp_path_factory.mktemp("judge") / "qwen"))


def make(qwen, **options) -> VlmJudgeReward:
    reward = VlmJudgeReward("judge", RewardSpec(type="vlm_judge", model=qwen, device="cpu", options=options))
    reward.load()
    return reward


def test_expected_score_from_digit_probabilities(qwen):
    reward = make(qwen, min_digit_mass=0.0, judge_batch_size=2)
    samples = [sample(), sample("a dog running on a beach", "action", refs=1), sample("two dogs", "Background", refs=0)]
    results = reward.score(samples)
    for r in results:
        assert r.error is None and 0.0 <= r.score <= 1.0
        dist = r.details["distribution"]
        assert len(dist) == 11 and sum(dist) == pytest.approx(1.0, abs=1e-3)
        assert r.score == pytest.approx(sum(k * p for k, p in enumerate(dist)) / 10, abs=1e-3)
        assert r.details["raw_score"] == pytest.approx(r.score * 10, abs=1e-3)
    assert [r.details["task"] for r in results] == ["generic", "action", "background"]
    # batching does not change a judgement (left padding keeps the last position)
    alone = reward.score(samples[1:2])[0]
    assert alone.score == pytest.approx(results[1].score, abs=1e-4)
    # deterministic
    assert reward.score(samples[:1])[0].score == pytest.approx(results[0].score, abs=1e-6)


def test_random_judge_fails_the_digit_mass_check(qwen):
    result = make(qwen).score([sample()])[0]  # default min_digit_mass 0.5; a random model spreads over 263 tokens
    assert result.score is None and "did not answer with a score" in result.error
    assert result.details["digit_mass"] < 0.5


def test_prompt_carries_references_instruction_and_template(qwen):
    reward = make(qwen, min_digit_mass=0.0, task="attribute")
    query = reward.query(sample())
    assert len(query.images) == 3 and sum(p["type"] == "image" for p in query.content) == 3
    text = reward.judge.prompt_text(query)
    assert "a dog wearing a red hat" in text and "Focus on attributes" in text and "Reference image 2 (hat)" in text
    assert text.endswith("<|im_start|>assistant\nScore: ")
    assert len(make(qwen, include_references=False).query(sample()).images) == 1


def test_user_templates_override_and_are_checked(tmp_path, qwen):
    (tmp_path / "generic.txt").write_text("Judge {instruction} for {subjects}. Reply 'Score: N'.")
    templates = load_templates(str(tmp_path))
    assert templates["generic"].startswith("Judge {instruction}")
    assert "Focus on actions" in templates["action"]  # not overridden
    reward = make(qwen, min_digit_mass=0.0, prompts_dir=str(tmp_path))
    assert "Judge a dog wearing a red hat for dog, hat." in reward.judge.prompt_text(reward.query(sample()))
    (tmp_path / "action.txt").write_text("Rate {prompt}")
    with pytest.raises(ValueError, match="bad placeholder"):
        load_templates(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        load_templates(str(tmp_path / "nope"))


def test_qwen2_vl_checkpoint_is_served_too(tmp_path):
    path = str(write_qwen2_vl(tmp_path / "qwen2"))
    reward = make(path, min_digit_mass=0.0)
    results = reward.score([sample(), sample("a dog running on a beach", refs=1)])
    assert all(r.error is None and 0.0 <= r.score <= 1.0 for r in results)
    assert type(reward.judge.model).__name__ == "Qwen2VLForConditionalGeneration"
