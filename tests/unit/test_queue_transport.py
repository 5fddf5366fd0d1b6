"""The client's queue transport refuses what the HTTP front refuses, before queueing anything."""

from __future__ import annotations

import time

import numpy as np
import pytest

from shared.client import RewardClient, RewardServiceError
from shared.queue.producer import RewardState
from shared.queue.transport import QueueTransport
from tests.servers import free_port


def test_a_sample_missing_a_reference_is_422_like_over_http() -> None:
    # over HTTP this is a 422 for the whole request; the queue used to send it to the workers
    transport = QueueTransport(f"redis://127.0.0.1:{free_port()}/0", timeout=5)  # nobody listens: nothing queued
    try:
        description = {"inputs": ["image", "references"], "max_batch_size": 4, "version": "v"}
        transport.producer.outage_since = None  # pretend Redis answered and a worker is live
        transport.producer.state = {"subj": RewardState(last_heartbeat=time.time() + 3600, live_workers=1,
                                                        description=description)}
        client = RewardClient("redis://unused", transport=transport, max_retries=0)
        image = np.zeros((4, 4, 3), np.uint8)
        with pytest.raises(RewardServiceError, match=r"samples\[1\]: reward 'subj' needs a reference") as err:
            client.score([image, image], {"subj": 1.0}, subjects=[[("dog", image)], [("cat", None)]])
        assert err.value.status == 422
    finally:
        transport.close()
