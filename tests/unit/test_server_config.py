"""Cross-field rules of the server config."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from reward_server.config import ServerConfig

REWARDS = {"b": {"type": "brightness"}}


def test_queue_ttls_must_outlast_the_request_timeout() -> None:
    # a 2 h timeout with the 1 h default blob TTL: queued images expired under a waiting caller,
    # who got a misleading "Redis lost the request"
    with pytest.raises(ValidationError, match=r"blob_ttl_s.*request_timeout_s"):
        ServerConfig.model_validate({"rewards": REWARDS, "request_timeout_s": 7200})
    with pytest.raises(ValidationError, match="result_ttl_s"):
        ServerConfig.model_validate({"rewards": REWARDS, "request_timeout_s": 100, "queue": {"result_ttl_s": 50}})
    ok = ServerConfig.model_validate({"rewards": REWARDS, "request_timeout_s": 7200,
                                      "queue": {"blob_ttl_s": 7200, "result_ttl_s": 9000}})
    assert ok.queue.blob_ttl_s == 7200


def test_the_readme_example_states_the_default_limits() -> None:
    # the README's rewards.yaml shows each limit with its value: a config without them gets exactly those
    import yaml

    from reward_server.config import LimitsConfig
    from reward_server.limits import RELEASE_AFTER_PIXELS
    from tests.servers import REPO

    text = (REPO / "README.md").read_text()
    block = text.split("## Configuration: `rewards.yaml`", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    example, defaults = yaml.safe_load(block), LimitsConfig()
    assert example["limits"] and {k: getattr(defaults, k) for k in example["limits"]} == example["limits"]
    assert example["request_timeout_s"] == ServerConfig.model_fields["request_timeout_s"].default
    assert "(1.6 GB decoded)" in block and round(3 * defaults.max_pixels_in_flight / 1e9, 1) == 1.6  # RGB bytes
    assert "After a large request (over 16M pixels)" in " ".join(text.split()) and RELEASE_AFTER_PIXELS == 16 * 2**20
