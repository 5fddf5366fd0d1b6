"""The process-wide budget of decoded pixels over real HTTP: wait briefly, then 503 + Retry-After."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import httpx

from reward_server.app import create_app
from reward_server.config import ServerConfig
from reward_server.front import install_front
from reward_server.serving import BackgroundServer
from shared.config import load_config
from tests.servers import wait_for, write_config

SIDE = 64


def test_requests_beyond_the_pixel_budget_wait_then_get_503_with_retry_after(tmp_path):
    # each request was bounded, the process was not: a few large ones at once exhausted the host
    config = write_config(
        tmp_path / "rewards.yaml",
        {"slow": {"type": "fixed_cost", "max_batch_size": 1, "options": {"seconds_per_batch": 0.5}}},
        limits={"max_request_pixels": SIDE * SIDE, "max_pixels_in_flight": 2 * SIDE * SIDE, "busy_wait_s": 0.2,
                "retry_after_s": 3},
    )
    app = create_app(load_config(ServerConfig, config))
    install_front(app, api_keys={})
    image = {"format": "raw", "shape": [SIDE, SIDE, 3], "data": base64.b64encode(bytes(SIDE * SIDE * 3)).decode()}
    body = {"rewards": {"slow": 1.0}, "samples": [{"image": image, "prompt": "p"}]}
    with BackgroundServer(app) as url:
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 30, "the server to be ready")
        with ThreadPoolExecutor(3) as pool:  # two fit in the budget and hold it while the model works
            answers = list(pool.map(lambda _: httpx.post(f"{url}/v1/score", json=body, timeout=30), range(3)))
        assert sorted(a.status_code for a in answers) == [200, 200, 503]
        [busy] = [a for a in answers if a.status_code == 503]
        assert busy.headers["retry-after"] == "3"
        assert "max_pixels_in_flight" in busy.json()["detail"] and "retry after 3s" in busy.json()["detail"]
        assert httpx.post(f"{url}/v1/score", json=body, timeout=30).status_code == 200  # room again
        metrics = httpx.get(f"{url}/metrics").text
        assert 'psr_requests_total{route="/v1/score",status="503"} 1.0' in metrics
