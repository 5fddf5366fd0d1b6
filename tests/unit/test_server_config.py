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
