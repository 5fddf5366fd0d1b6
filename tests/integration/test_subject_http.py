"""The PSR reward behind a real ``psr serve``: known boxes in the metadata travel over HTTP and the
per-subject details (missing, confusion) come back to the client."""

from __future__ import annotations

import pytest

from shared.client import RewardClient
from tests.servers import server_process, write_config
from tests.unit.subject_helpers import patch, scene, write_tiny_dino

pytestmark = pytest.mark.slow


def test_subject_details_over_http(tmp_path):
    dino = write_tiny_dino(tmp_path / "dino")
    options = {"detector": {"kind": "fixed"}, "reference_crop": "none"}
    config = write_config(
        tmp_path / "rewards.yaml",
        {"subject": {"type": "subject_consistency", "model": dino, "device": "cpu", "options": options}},
    )
    a, b = patch(1), patch(3)
    image, boxes = scene([(b, (10, 10)), (a, (100, 100))])
    subjects = [("dog", a), ("cat", b)]
    metadata = [
        {"boxes": {"dog": [boxes[1]], "cat": [boxes[0]]}},  # both subjects where they are
        {"boxes": {"dog": [boxes[1]]}},  # the cat is missing
        {"boxes": {"dog": [boxes[0]], "cat": [boxes[0]]}},  # the "dog" is the cat
    ]
    with server_process(config) as url, RewardClient(url, image_format="png") as client:
        res = client.score([image] * 3, {"subject": 1.0}, subjects=[subjects] * 3, metadata=metadata)
    scores = res.scores["subject"]
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert scores[1] == pytest.approx(0.5, abs=1e-5)
    assert scores[2] < 1.0
    details = res.details["subject"]
    assert details[1]["subjects"][1]["missing"] and details[1]["missing"] == 1
    assert details[2]["subjects"][0]["confused_with"] == 1
    assert details[0]["subjects"][0]["box"] == boxes[1]
