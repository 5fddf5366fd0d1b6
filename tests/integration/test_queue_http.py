"""The queue front over real HTTP: uvicorn + real redis-server + a real Worker, the lead's client."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from reward_server.app import create_app
from reward_server.config import ServerConfig
from reward_server.front import install_front
from reward_server.queue.backend import RedisBackend
from reward_server.registry import build_rewards
from reward_server.serving import BackgroundServer
from shared.client import RewardClient, RewardServiceError
from shared.config import load_config
from shared.queue.transport import QueueTransport
from tests import queue_helpers
from tests.queue_helpers import ThreadWorker, wait_for, write_config

redis_server = queue_helpers.redis_server  # fixture

KEY_A = "alice:" + "a" * 24
KEY_B = "bob:" + "b" * 24
REWARDS = {
    "bright": {"type": "brightness", "max_wait_ms": 2},
    "red": {"type": "color", "options": {"target": [255, 0, 0]}},
    "fc": {"type": "fixed_cost", "max_batch_size": 4, "options": {"error_on": "bad"}},
    "slow": {"type": "fixed_cost", "max_batch_size": 4, "options": {"seconds_per_batch": 1.0}},
    "orphan": {"type": "brightness"},  # no worker hosts it
}
HOSTED = ["bright", "red", "fc", "slow"]


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (12, 16, 3), dtype=np.uint8) for _ in range(n)]


@dataclass
class Stack:
    url: str  # the HTTP front
    redis_url: str
    config: Path


@pytest.fixture
def stack(tmp_path, redis_server):
    """A queue front (HTTP, API keys, limit 6 samples per caller) and one worker hosting HOSTED."""
    cfg = write_config(tmp_path / "rewards.yaml", REWARDS, limits={"max_queued_samples_per_caller": 6})
    config = load_config(ServerConfig, cfg)
    rewards = build_rewards(config)
    backend = RedisBackend(redis_server.url, rewards, config.queue, config.request_timeout_s)
    app = create_app(config, rewards=rewards, backend=backend, load_models=False)
    install_front(app, api_keys={KEY_A.split(":")[1]: "alice", KEY_B.split(":")[1]: "bob"})
    with ThreadWorker(cfg, redis_server.url, HOSTED), BackgroundServer(app) as url:
        wait_for(lambda: httpx.get(f"{url}/readyz").json()["workers"]["bright"] == 1, 10, "readyz to list the worker")
        yield Stack(url, redis_server.url, cfg)


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key.split(':')[1]}"}


def test_every_route_but_health_needs_a_valid_key(stack):
    url = stack.url
    assert httpx.get(f"{url}/healthz").status_code == 200
    ready = httpx.get(f"{url}/readyz").json()  # public, shows live workers per reward
    assert ready["workers"] == {"bright": 1, "red": 1, "fc": 1, "slow": 1, "orphan": 0}
    assert ready["rewards"]["orphan"] is False
    for method, path in [("GET", "/v1/rewards"), ("POST", "/v1/score"), ("POST", "/v1/jobs"),
                         ("GET", "/v1/jobs/x"), ("GET", "/metrics")]:
        assert httpx.request(method, f"{url}{path}").status_code == 401, path
        bad = httpx.request(method, f"{url}{path}", headers={"authorization": "Bearer " + "x" * 24})
        assert bad.status_code == 401 and "invalid API key" in bad.json()["detail"]
        assert bad.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{url}/v1/rewards", headers=_auth(KEY_A)).status_code == 200
    metrics = httpx.get(f"{url}/metrics", headers=_auth(KEY_A))
    assert metrics.status_code == 200


def test_http_queue_transport_and_embedded_give_the_same_answers(stack, tmp_path):
    url, cfg = stack.url, stack.config
    images = _images(9)
    prompts = [f"prompt {'bad' if i == 3 else ''} {i}" for i in range(9)]
    weights = {"bright": 1.0, "red": 0.5, "fc": 2.0}
    with RewardClient(url, api_key=KEY_A.split(":")[1]) as client:
        via_http = client.score(images, weights, prompts=prompts)
    with RewardClient("redis", transport=QueueTransport(stack.redis_url)) as client:
        via_queue = client.score(images, weights, prompts=prompts)
    embedded_app = create_app(load_config(ServerConfig, cfg))
    embedded = BackgroundServer(embedded_app)
    embedded.start()
    wait_for(lambda: httpx.get(f"{embedded.url}/readyz").status_code == 200, 30, "embedded server ready")
    with RewardClient(embedded.url) as client:
        via_embedded = client.score(images, weights, prompts=prompts)
    for other in (via_queue, via_embedded):
        assert set(other.scores) == set(via_http.scores)
        for name in weights:
            np.testing.assert_array_equal(other.scores[name], via_http.scores[name])
        np.testing.assert_array_equal(other.total, via_http.total)
        assert other.errors == via_http.errors
        assert other.versions == via_http.versions
        assert other.details == via_http.details
    assert np.isnan(via_http.scores["fc"][3]) and via_http.errors[0]["sample"] == 3
    assert via_http.valid().sum() == 8


def _nested(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = {"k": value}
    return value


def _tricky_bodies() -> list[tuple[str, bytes]]:
    """Bodies the JSON parser accepts that once went different ways on the embedded and queue routes."""
    image = {"format": "raw", "shape": [2, 2, 3], "data": "AAAAAAAAAAAAAAAA"}

    def body(metadata: object = None, rewards: object = None, prompt: str = "abc") -> bytes:
        sample = {"image": image, "prompt": prompt, **({"metadata": metadata} if metadata is not None else {})}
        return json.dumps({"rewards": rewards or {"bright": 1.0, "fc": 1.0}, "samples": [sample]}).encode()

    return [
        ("int over 64 bits", body({"id": 2**64})),
        ("int under -2**63", body({"id": -(2**63) - 1})),
        ("ints at the 64-bit edges", body({"ids": [2**64 - 1, -(2**63)]})),
        ("JSON values of every kind", body({"a": [1.5, "x", None, True, {"b": []}], "é": "😀"})),
        ("deep metadata", body(_nested(40))),
        ("metadata within the nesting limit", body(_nested(20))),
        ("huge float", body({"x": 1e308})),
        ("float overflowing to inf", body({"x": 1}).replace(b'"x": 1', b'"x": 1e400')),
        ("string weight", body(rewards={"bright": "1"})),
        ("duplicate reward", body().replace(b'"fc": 1.0', b'"bright": 2.0')),
        ("unicode prompt", body(prompt="un chien 🐕 " * 50)),
    ]


def test_anything_the_json_parser_accepts_gets_the_same_answer_from_embedded_and_queue_routes(stack):
    # a metadata integer beyond 64 bits was 200 embedded and 500 through the queue (msgpack overflow),
    # and /v1/jobs stored it as a 500 job
    embedded = BackgroundServer(create_app(load_config(ServerConfig, stack.config)))
    embedded.start()
    headers = {**_auth(KEY_A), "content-type": "application/json"}
    try:
        wait_for(lambda: httpx.get(f"{embedded.url}/readyz").status_code == 200, 30, "embedded server ready")
        for name, body in _tricky_bodies():
            there = httpx.post(f"{embedded.url}/v1/score", content=body, headers=headers, timeout=30)
            here = httpx.post(f"{stack.url}/v1/score", content=body, headers=headers, timeout=30)
            assert here.status_code == there.status_code < 500, (name, here.text, there.text)
            if here.status_code == 200:
                assert here.json()["scores"] == there.json()["scores"], name
            job = httpx.post(f"{stack.url}/v1/jobs", content=body, headers=headers)
            if job.status_code == 202:
                record = wait_for(lambda j=job: (r := httpx.get(f"{stack.url}/v1/jobs/{j.json()['id']}",
                                                                headers=headers).json())["status"] != "pending" and r,
                                  10, f"the job of {name}")
                assert record["status"] == "done" if here.status_code == 200 else record["code"] < 500, (name, record)
            else:
                assert job.status_code == here.status_code, (name, job.text)
    finally:
        embedded.stop()


def test_reward_without_worker_is_503_naming_it(stack):
    url = stack.url
    with RewardClient(url, api_key=KEY_A.split(":")[1], max_retries=0) as client:
        started = time.monotonic()
        with pytest.raises(RewardServiceError, match="orphan") as err:
            client.score(_images(1), {"bright": 1.0, "orphan": 1.0})
    assert err.value.status == 503 and time.monotonic() - started < 1.0


def test_jobs_route_polls_to_the_same_answer_and_hides_other_callers_jobs(stack):
    url = stack.url
    body = {"rewards": {"bright": 1.0, "fc": 1.0},
            "samples": [{"image": {"format": "raw", "shape": [2, 2, 3], "data": "AAAAAAAAAAAAAAAA"},
                         "prompt": "abc"}]}
    sync = httpx.post(f"{url}/v1/score", json=body, headers=_auth(KEY_A)).json()
    created = httpx.post(f"{url}/v1/jobs", json=body, headers=_auth(KEY_A))
    assert created.status_code == 202
    job_id = created.json()["id"]
    done = wait_for(lambda: (r := httpx.get(f"{url}/v1/jobs/{job_id}", headers=_auth(KEY_A)).json())["status"]
                    != "pending" and r, 10, "the job to finish")
    assert done["status"] == "done" and done["result"] == sync
    assert httpx.get(f"{url}/v1/jobs/{job_id}", headers=_auth(KEY_B)).status_code == 404
    bad = httpx.post(f"{url}/v1/jobs", json={**body, "rewards": {"nope": 1.0}}, headers=_auth(KEY_A))
    assert bad.status_code == 422 and "nope" in bad.json()["detail"]


def test_queue_length_per_caller_is_limited_with_429_and_retry_after(stack):
    url = stack.url
    body = {"rewards": {"slow": 1.0},
            "samples": [{"image": {"format": "raw", "shape": [1, 1, 3], "data": "AAAA"}, "prompt": "p"}] * 4}
    first: dict = {}
    thread = threading.Thread(target=lambda: first.update(
        r=httpx.post(f"{url}/v1/score", json=body, headers=_auth(KEY_A), timeout=30)))
    thread.start()
    wait_for(lambda: httpx.get(f"{url}/metrics", headers=_auth(KEY_A)).text.count('psr_queue_jobs_waiting{reward="slow"} 1.0'),
             10, "alice's first request to be queued")
    refused = httpx.post(f"{url}/v1/score", json=body, headers=_auth(KEY_A))
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "alice" in refused.json()["detail"] and "limit 6" in refused.json()["detail"]
    refused_job = httpx.post(f"{url}/v1/jobs", json=body, headers=_auth(KEY_A))
    assert refused_job.status_code == 429 and refused_job.headers["retry-after"] == "1"
    other = httpx.post(f"{url}/v1/score", json=body, headers=_auth(KEY_B), timeout=30)  # bob has his own share
    thread.join(30)
    assert other.status_code == 200 and first["r"].status_code == 200
    assert httpx.post(f"{url}/v1/score", json=body, headers=_auth(KEY_A), timeout=30).status_code == 200  # freed


def test_jobs_route_on_the_embedded_backend_without_keys(tmp_path):
    cfg = write_config(tmp_path / "rewards.yaml", {"bright": {"type": "brightness"}})
    app = create_app(load_config(ServerConfig, cfg))
    install_front(app, api_keys={})
    good = {"rewards": {"bright": 1.0}, "samples": [{"image": {"format": "raw", "shape": [1, 1, 3], "data": "////"}}]}
    bad = {"rewards": {"bright": 1.0}, "samples": [{"image": {"format": "raw", "shape": [2, 2, 3], "data": "AAAA"}}]}
    with BackgroundServer(app) as url:
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 30, "the embedded server")
        ids = [httpx.post(f"{url}/v1/jobs", json=body).json()["id"] for body in (good, bad)]
        records = [wait_for(lambda i=i: (r := httpx.get(f"{url}/v1/jobs/{i}").json())["status"] != "pending" and r,
                            10, "the job to finish") for i in ids]
        assert httpx.get(f"{url}/v1/jobs/unknown").status_code == 404
    assert records[0]["status"] == "done" and records[0]["result"]["scores"] == {"bright": [1.0]}
    assert records[1]["status"] == "failed" and records[1]["code"] == 422
    assert "samples[0].image" in records[1]["error"]
