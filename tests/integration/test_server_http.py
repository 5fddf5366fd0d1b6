"""The reward server as users run it: a real ``psr serve`` process over real HTTP."""

from __future__ import annotations

import base64
import io
import subprocess

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.client import RewardClient, RewardServiceError
from shared.protocol import MSGPACK, pack, unpack
from tests.servers import REPO, psr_command, repo_env, server_process, write_config

pytestmark = pytest.mark.slow

REWARDS = {
    "brightness": {"type": "brightness", "max_wait_ms": 20},
    "red": {"type": "color", "options": {"target": [255, 0, 0]}},
    "flaky": {"type": "fixed_cost", "options": {"error_on": "bad", "fail_on": "boom"}},
}


def png_b64(value: int, size: int = 8) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    config = write_config(tmp_path_factory.mktemp("srv") / "rewards.yaml", REWARDS)
    with server_process(config) as url:
        yield url


def test_health_ready_and_reward_listing(server):
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server}/readyz").json()
    assert ready["ready"] is True and set(ready["rewards"]) == set(REWARDS)
    listed = {r["name"]: r for r in httpx.get(f"{server}/v1/rewards").json()["rewards"]}
    assert listed["red"]["type"] == "color" and listed["red"]["options"]["target"] == [255, 0, 0]
    assert listed["brightness"]["version"].startswith("brightness/")


def test_json_body_scores_and_totals(server):
    body = {
        "rewards": {"brightness": 2.0, "red": 1.0},
        "samples": [{"image": png_b64(255)}, {"image": png_b64(0)}],
    }
    answer = httpx.post(f"{server}/v1/score", json=body).json()
    assert answer["scores"]["brightness"] == pytest.approx([1.0, 0.0])
    red = answer["scores"]["red"]
    assert answer["total"] == pytest.approx([2.0 + red[0], red[1]])
    assert set(answer["versions"]) == {"brightness", "red"}


def test_msgpack_raw_equals_json_png(server):
    image = np.random.default_rng(0).integers(0, 255, (16, 12, 3), dtype=np.uint8)
    raw = {"format": "raw", "shape": list(image.shape), "data": image.tobytes()}
    response = httpx.post(
        f"{server}/v1/score",
        content=pack({"rewards": {"brightness": 1.0}, "samples": [{"image": raw}]}),
        headers={"content-type": MSGPACK, "accept": MSGPACK},
    )
    assert response.headers["content-type"] == MSGPACK
    binary = unpack(response.content)["scores"]["brightness"][0]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    body = {"rewards": {"brightness": 1.0}, "samples": [{"image": base64.b64encode(buf.getvalue()).decode()}]}
    text = httpx.post(f"{server}/v1/score", json=body).json()["scores"]["brightness"][0]
    assert binary == pytest.approx(text) == pytest.approx(image.mean() / 255)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"rewards": {"nope": 1}, "samples": [{"image": "x"}]}, 422, "samples.0.image"),
        ({"rewards": {"nope": 1}, "samples": [{"image": png_b64(1)}]}, 422, "unknown rewards ['nope']"),
        ({"rewards": {}, "samples": []}, 422, "rewards"),
        ({"rewards": {"red": 1}, "samples": [{"image": png_b64(1)}], "extra": 1}, 422, "extra"),
        ({"rewards": {"red": 1}, "samples": [{"image": {"format": "raw", "shape": [2, 2, 3], "data": "AAAA"}}]},
         422, "needs 12 bytes"),
    ],
)
def test_bad_requests_get_4xx_with_a_message(server, body, status, needle):
    response = httpx.post(f"{server}/v1/score", json=body)
    assert response.status_code == status
    assert needle in response.json()["detail"]


def test_malformed_bodies(server):
    assert httpx.post(f"{server}/v1/score", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    assert httpx.post(f"{server}/v1/score", content=b"\xc1", headers={"content-type": MSGPACK}).status_code == 400
    assert httpx.post(f"{server}/v1/score", content=b"x", headers={"content-type": "text/plain"}).status_code == 415


def test_failing_sample_is_null_with_reason_and_others_still_score(server):
    with RewardClient(server) as client:
        res = client.score(
            [np.zeros((8, 8, 3), np.uint8)] * 3, {"flaky": 1.0, "brightness": 1.0}, prompts=["ok", "bad", "fine!"]
        )
    assert np.isnan(res.scores["flaky"][1]) and np.isnan(res.total[1])
    assert res.scores["flaky"][0] == pytest.approx(0.2) and res.scores["flaky"][2] == pytest.approx(0.5)
    assert res.errors == [{"sample": 1, "reward": "flaky", "message": "fixed_cost was told to fail on 'bad'"}]


def test_a_raising_request_does_not_fail_concurrent_ones(server):
    image = np.zeros((8, 8, 3), np.uint8)
    with RewardClient(server, max_retries=0) as client:
        futures = [client.submit([image], {"flaky": 1.0}, prompts=[p]) for p in ["boom", "abc", "abcd", "boom"]]
        results = [f.result(timeout=30) for f in futures]
    assert np.isnan(results[0].scores["flaky"][0]) and "RuntimeError" in results[0].errors[0]["message"]
    assert results[1].scores["flaky"][0] == pytest.approx(0.3)
    assert results[2].scores["flaky"][0] == pytest.approx(0.4)


def test_client_splits_large_batches_and_keeps_order(server):
    images = [np.full((4, 4, 3), v, np.uint8) for v in range(0, 250, 10)]
    with RewardClient(server, batch_size=4, image_format="jpeg") as client:
        res = client.score(images, {"brightness": 1.0}, prompts=["bad" if i == 9 else "" for i in range(25)])
    assert len(res) == 25
    assert np.allclose(res.scores["brightness"], [v / 255 for v in range(0, 250, 10)], atol=0.02)


def test_client_raises_4xx_without_retry(server):
    with RewardClient(server) as client, pytest.raises(RewardServiceError, match="unknown rewards") as info:
        client.score([np.zeros((4, 4, 3), np.uint8)], {"missing": 1.0})
    assert info.value.status == 422


def test_metrics_count_requests_images_and_batches(server):
    with RewardClient(server) as client:
        client.score([np.zeros((4, 4, 3), np.uint8)] * 5, {"brightness": 1.0})
    text = httpx.get(f"{server}/metrics").text
    scored = [line for line in text.splitlines() if line.startswith('psr_images_scored_total{reward="brightness"}')]
    assert scored and float(scored[0].split()[-1]) >= 5
    assert 'psr_batch_size_count{reward="brightness"}' in text
    assert 'psr_requests_total{route="/v1/score",status="200"}' in text


def test_openapi_documents_both_wire_forms(server):
    spec = httpx.get(f"{server}/openapi.json").json()
    content = spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", MSGPACK}
    assert "ScoreRequest" in spec["components"]["schemas"]


def test_psr_score_command_prints_a_table(server, tmp_path):
    paths = []
    for value in (0, 255):
        path = tmp_path / f"img{value}.png"
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
        paths.append(str(path))
    out = subprocess.run(
        psr_command("score", *paths, "--server", server, "-r", "brightness=2,red"),
        env=repo_env(), cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["image", "brightness", "red", "total"]
    assert lines[3].split()[:2] == ["img255.png", "1.0000"]


def test_serve_exits_nonzero_when_a_model_fails_to_load(tmp_path):
    config = write_config(tmp_path / "bad.yaml", {"x": {"type": "no_such_reward"}})
    out = subprocess.run(psr_command("serve", "--config", str(config), "--port", "0"),
                         env=repo_env(), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "unknown reward type 'no_such_reward'" in out.stderr
