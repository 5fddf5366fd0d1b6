"""The endpoint judge against a real OpenAI-style chat server (FastAPI + uvicorn) started here."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from reward_server.config import RewardSpec
from reward_server.rewards.vlm_judge import VlmJudgeReward
from shared.protocol import Sample, Subject
from tests.chat_server import running_chat_server


@pytest.fixture(scope="module")
def server():
    with running_chat_server() as running:
        yield running


def make(url, **options):
    opts = {"backend": "openai", "endpoint": url, "retry_backoff_s": 0.0, **options}
    reward = VlmJudgeReward("judge", RewardSpec(type="vlm_judge", model="judge-model", device="cpu", options=opts))
    reward.load()
    return reward


def sample(prompt, refs=1):
    rng = np.random.default_rng(0)
    subjects = tuple(Subject("dog", rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)) for _ in range(refs))
    return Sample(image=rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), prompt=prompt, subjects=subjects)


def test_scores_are_parsed_and_normalised(server):
    fake, url = server
    reward = make(url)
    results = reward.score([sample("ANSWER=Score: 7|"), sample("ANSWER=It is fine.\\nScore: 10|", refs=2)])
    assert [r.score for r in results] == [0.7, 1.0]
    assert results[1].details["answer"].endswith("Score: 10")
    assert sorted(map(len, fake.image_sizes[-2:])) == [2, 3]  # references + generated image, decodable JPEGs
    assert (50, 40) in fake.image_sizes[-1] or (50, 40) in fake.image_sizes[-2]


def test_unparseable_answers_fail_with_the_reason(server):
    _, url = server
    results = make(url).score([sample("ANSWER=I like it a lot|"), sample("ANSWER=Score: 12|"), sample("BROKEN")])
    assert all(r.score is None for r in results)
    assert "unparseable" in results[0].error and "no 'Score: N' line" in results[0].error
    assert "outside 0..10" in results[1].error
    assert "no chat completion" in results[2].error


def test_retries_on_503_then_gives_up_on_persistent_errors(server):
    _, url = server
    reward = make(url, max_retries=2)
    ok, gave_up, not_retried = reward.score(
        [sample("FAIL=2x503 ANSWER=Score: 4|"), sample("FAIL=5x429 ANSWER=Score: 4|"), sample("FAIL=1x400 ANSWER=Score: 4|")]
    )
    assert ok.score == 0.4
    assert gave_up.score is None and "429" in gave_up.error and "3 attempts" in gave_up.error
    assert not_retried.score is None and "HTTP 400" in not_retried.error


def test_concurrency_is_bounded(server):
    fake, url = server
    fake.max_in_flight = 0
    results = make(url, concurrency=3).score([sample(f"ANSWER=Score: {i % 11}|{i}") for i in range(12)])
    assert [r.score for r in results] == [(i % 11) / 10 for i in range(12)]
    assert 1 < fake.max_in_flight <= 3


def test_unreachable_endpoint_is_a_failure_not_a_crash():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    reward = make(f"http://127.0.0.1:{port}/v1", max_retries=1)
    result = reward.score([sample("ANSWER=Score: 5|")])[0]
    assert result.score is None and "unreachable" in result.error


def test_openai_backend_needs_an_endpoint():
    with pytest.raises(ValueError, match=r"needs options\.endpoint"):
        VlmJudgeReward("judge", RewardSpec(type="vlm_judge", model="m", options={"backend": "openai"}))
