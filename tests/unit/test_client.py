"""Client behaviour without a server: retries, splitting, answers."""

from __future__ import annotations

import numpy as np
import pytest

from shared.client import RetryableError, RewardClient, RewardServiceError, Scores, build_requests
from shared.images import decode_image


class ScriptedTransport:
    """Answers each request by calling the next scripted step (raise or reply)."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.requests: list[dict] = []

    def score(self, request):
        self.requests.append(request)
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return step(request)

    def close(self):
        pass


def echo_brightness(request):
    values = [float(decode_image(s["image"]).mean() / 255) for s in request["samples"]]
    return {"scores": {"b": values}, "total": values, "errors": [], "details": {}, "versions": {"b": "v1"}}


def client(transport, **kw):
    return RewardClient("http://unused", transport=transport, retry_backoff=0.0, **kw)


def test_retries_retryable_errors_then_succeeds():
    transport = ScriptedTransport(RetryableError("down"), RetryableError("503", 503), echo_brightness)
    res = client(transport, max_retries=2).score([np.zeros((2, 2, 3), np.uint8)], {"b": 1.0})
    assert len(transport.requests) == 3 and res.total.tolist() == [0.0]


def test_gives_up_after_max_retries():
    transport = ScriptedTransport(*(RetryableError("down") for _ in range(3)))
    with pytest.raises(RewardServiceError, match="gave up after 3 tries"):
        client(transport, max_retries=2).score([np.zeros((2, 2, 3), np.uint8)], {"b": 1.0})


def test_client_errors_are_not_retried():
    transport = ScriptedTransport(RewardServiceError("422 bad", 422), echo_brightness)
    with pytest.raises(RewardServiceError, match="422 bad"):
        client(transport, max_retries=5).score([np.zeros((2, 2, 3), np.uint8)], {"b": 1.0})
    assert len(transport.requests) == 1


def test_batches_are_split_and_rejoined_in_order():
    transport = ScriptedTransport(*(echo_brightness for _ in range(3)))
    images = [np.full((2, 2, 3), v, np.uint8) for v in (0, 51, 102, 153, 204)]
    res = client(transport, batch_size=2).score(images, {"b": 1.0})
    assert [len(r["samples"]) for r in transport.requests] == [2, 2, 1]
    assert np.allclose(res.total, [0.0, 0.2, 0.4, 0.6, 0.8])


def test_concat_shifts_error_indices_and_pads_details():
    a = Scores.from_response({"scores": {"x": [1.0, None]}, "total": [1.0, None],
                              "errors": [{"sample": 1, "reward": "x", "message": "m"}], "details": {}})
    b = Scores.from_response({"scores": {"x": [None]}, "total": [None],
                              "errors": [{"sample": 0, "reward": "x", "message": "n"}], "details": {"x": [{"k": 1}]}})
    joined = Scores.concat([a, b])
    assert [e["sample"] for e in joined.errors] == [1, 2]
    assert joined.details == {"x": [None, None, {"k": 1}]}
    assert joined.valid().tolist() == [True, False, False]


def test_build_requests_checks_lengths_and_encodes_subjects():
    image = np.zeros((3, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="prompts has 1 entries for 2 images"):
        build_requests([image, image], {"b": 1.0}, prompts=["x"])
    with pytest.raises(ValueError, match="at least one reward"):
        build_requests([image], {})
    (request,) = build_requests([image], {"b": 1.0}, subjects=[[("dog", image), {"category": "cat"}]])
    subjects = request["samples"][0]["subjects"]
    assert subjects[0]["category"] == "dog" and subjects[0]["reference"]["shape"] == [3, 4, 3]
    assert subjects[1] == {"category": "cat", "reference": None}


def test_no_images_means_no_request():
    transport = ScriptedTransport()
    res = client(transport).score([], {"b": 1.0})
    assert len(res) == 0 and res.scores["b"].shape == (0,) and transport.requests == []


@pytest.mark.parametrize("header", ["Wed, 21 Oct 2015 07:28:00 GMT", "nan", "-5", "soon"])
def test_a_retry_after_that_is_not_seconds_still_means_retry(header):
    # a proxy may send an HTTP date (RFC 9110) or junk: that used to raise ValueError in the client
    import httpx

    from shared.client import _backoff, _raise_for_status

    response = httpx.Response(503, headers={"retry-after": header}, json={"detail": "busy"})
    with pytest.raises(RetryableError, match="busy") as info:
        _raise_for_status(response)
    wait = _backoff(0, info.value, 0.5)
    assert 0.0 <= wait <= 30.0


def test_async_client_refuses_a_queue_url_at_construction():
    from shared.client import AsyncRewardClient

    with pytest.raises(ValueError, match="HTTP only"):
        AsyncRewardClient("redis://127.0.0.1:6379/0")


def test_requests_are_cut_to_the_servers_pixel_limit_as_well_as_the_count():
    # the server refuses requests whose images decode to more than limits.max_request_pixels
    images = [np.zeros((10, 10, 3), np.uint8)] * 5
    subjects = [[("dog", np.zeros((10, 10, 3), np.uint8))]] * 5  # 200 pixels per sample
    requests = build_requests(images, {"a": 1.0}, subjects=subjects, batch_size=4, max_pixels=450)
    assert [len(r["samples"]) for r in requests] == [2, 2, 1]
    png = build_requests(images, {"a": 1.0}, image_format="png", batch_size=10, max_pixels=250)
    assert [len(r["samples"]) for r in png] == [2, 2, 1]
