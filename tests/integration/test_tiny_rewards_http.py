"""Every reward of ``psr make-tiny``'s config, served by a real ``psr serve`` process, answers
exactly what the reward computes when called directly."""

from __future__ import annotations

import numpy as np
import pytest

from shared.client import RewardClient
from tests.reward_contract import make_sample
from tests.servers import server_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tiny_config):
    with server_process(tiny_config) as url, RewardClient(url, image_format="raw") as client:
        yield client


def test_every_tiny_reward_served_equals_direct(served, tiny_server_config, load_tiny_reward):
    rng = np.random.default_rng(7)
    samples = [make_sample(rng, i, size=(40 + 4 * i, 48)) for i in range(5)]
    hosted = {r["name"]: r for r in served.rewards()}
    assert set(hosted) == set(tiny_server_config.rewards)
    for name in tiny_server_config.rewards:
        reward = load_tiny_reward(name)
        direct = [r.score for r in reward.score(samples)]
        res = served.score(
            [s.image for s in samples],
            {name: 1.0},
            prompts=[s.prompt for s in samples],
            subjects=[[(sub.category, sub.reference) for sub in s.subjects] for s in samples],
            metadata=[s.metadata for s in samples],
        )
        # a reward may fail a sample it cannot score (e.g. position: no spatial relation): NaN both ways
        direct_scores = np.array([np.nan if v is None else v for v in direct], dtype=np.float64)
        np.testing.assert_allclose(res.scores[name], direct_scores, rtol=1e-4, atol=1e-5, equal_nan=True, err_msg=name)
        assert res.versions[name] == reward.version == hosted[name]["version"]


def test_a_model_that_fails_to_load_stops_the_server(tmp_path):
    import subprocess

    from tests.servers import REPO, psr_command, repo_env, write_config

    (tmp_path / "empty").mkdir()  # exists (a missing path is a config error, exit 2) but holds no checkpoint
    config = write_config(tmp_path / "r.yaml", {"sim": {"type": "image_similarity", "model": str(tmp_path / "empty")}})
    out = subprocess.run(psr_command("serve", "--config", str(config), "--port", "0"),
                         env=repo_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "reward 'sim' failed to load" in out.stderr
