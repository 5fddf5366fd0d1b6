"""ScoringService: validation, input checks, totals and failures, without HTTP."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence

import numpy as np
import pytest

from reward_server.config import RewardSpec
from reward_server.rewards import Reward, ScoreResult
from reward_server.rewards.base import REFERENCES
from reward_server.rewards.synthetic import BrightnessReward, FixedCostReward
from reward_server.service import LocalBackend, RewardUnavailable, ScoringService, assemble_response
from shared.images import ImageLimits, encode_image
from shared.protocol import InvalidRequest, SampleIn, ScoreRequest, ScoreResponse, SubjectIn

IMAGE = np.full((4, 4, 3), 51, np.uint8)  # brightness 0.2


class NaNOnPrompt(Reward):
    """Returns NaN/inf on chosen prompts; needs references."""

    type_name = "nan_for_tests"
    inputs = frozenset({REFERENCES})

    def load(self) -> None:
        pass

    def score(self, samples: Sequence) -> list[ScoreResult]:
        values = {"nan": math.nan, "inf": math.inf}
        return [ScoreResult(values.get(s.prompt, 0.5), details={"p": s.prompt}) for s in samples]


def make_rewards() -> dict[str, Reward]:
    rewards = {
        "brightness": BrightnessReward("brightness", RewardSpec(type="brightness")),
        "cost": FixedCostReward("cost", RewardSpec(type="fixed_cost", options={"error_on": "oops"})),
        "refs": NaNOnPrompt("refs", RewardSpec(type="nan_for_tests")),
    }
    for reward in rewards.values():
        reward.load()
        reward.loaded = True
    return rewards


def sample(prompt: str = "abc", refs: int = 1) -> SampleIn:
    return SampleIn(
        image=encode_image(IMAGE, "raw"),
        prompt=prompt,
        subjects=[SubjectIn(category="dog", reference=encode_image(IMAGE, "png")) for _ in range(refs)],
    )


def run(request: ScoreRequest, rewards: dict[str, Reward] | None = None, **kwargs) -> ScoreResponse:
    rewards = rewards or make_rewards()

    async def main() -> ScoreResponse:
        backend = LocalBackend(rewards)
        try:
            return await ScoringService(rewards, backend, **kwargs).score(request)
        finally:
            await backend.close()

    return asyncio.run(main())


def test_scores_and_weighted_total() -> None:
    response = run(
        ScoreRequest(rewards={"brightness": 2.0, "cost": 1.0}, samples=[sample("abc"), sample("abcdefg")])
    )
    assert response.scores["brightness"] == pytest.approx([0.2, 0.2])
    assert response.scores["cost"] == pytest.approx([0.3, 0.7])
    assert response.total == pytest.approx([0.7, 1.1])
    assert response.errors == [] and set(response.versions) == {"brightness", "cost"}
    assert "cost" in response.details and "brightness" not in response.details


def test_unknown_reward_lists_hosted_ones() -> None:
    with pytest.raises(
        InvalidRequest, match=r"unknown rewards \['clip'\]; this server hosts: brightness, cost, refs"
    ):
        run(ScoreRequest(rewards={"clip": 1.0}, samples=[sample()]))


def test_missing_references_name_the_sample() -> None:
    request = ScoreRequest(rewards={"refs": 1.0}, samples=[sample(), sample(refs=0)])
    with pytest.raises(InvalidRequest, match=r"samples\[1\]: reward 'refs' needs subjects"):
        run(request)


def test_total_is_null_when_one_part_failed() -> None:
    response = run(
        ScoreRequest(rewards={"brightness": 1.0, "cost": 1.0}, samples=[sample("ok"), sample("oops")])
    )
    assert response.scores["cost"][1] is None and response.scores["brightness"][1] == pytest.approx(0.2)
    assert response.total[0] == pytest.approx(0.4) and response.total[1] is None
    assert [(e.sample, e.reward) for e in response.errors] == [(1, "cost")]
    assert "oops" in response.errors[0].message


def test_non_finite_score_becomes_null_with_an_error() -> None:
    response = run(
        ScoreRequest(rewards={"refs": 1.0}, samples=[sample("fine"), sample("nan"), sample("inf")])
    )
    assert response.scores["refs"] == [0.5, None, None]
    assert response.total == [0.5, None, None]
    assert [e.sample for e in response.errors] == [1, 2]
    assert all("non-finite" in e.message for e in response.errors)
    assert response.details["refs"][1] == {"p": "nan"}  # details survive the failure


def test_too_many_samples_no_samples_and_bad_images_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="no samples"):
        run(ScoreRequest(rewards={"brightness": 1.0}, samples=[]))
    with pytest.raises(InvalidRequest, match="limit is 2"):
        run(ScoreRequest(rewards={"brightness": 1.0}, samples=[sample()] * 3), max_samples_per_request=2)
    broken = SampleIn(image=b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InvalidRequest, match=r"samples\[1\]\.image"):
        run(ScoreRequest(rewards={"brightness": 1.0}, samples=[sample(), broken]))


def test_unloaded_reward_is_unavailable() -> None:
    rewards = make_rewards()
    rewards["cost"].loaded = False
    with pytest.raises(RewardUnavailable, match="cost"):
        run(ScoreRequest(rewards={"cost": 1.0}, samples=[sample()]), rewards)


def test_assemble_response_only_totals_requested_weights() -> None:
    results = {"a": [ScoreResult(1.0), ScoreResult.failed("no")], "b": [ScoreResult(2.0), ScoreResult(3.0)]}
    response = assemble_response({"a": 0.5, "b": -1.0}, results, {"a": "va", "b": "vb"}, 2)
    assert response.total == [pytest.approx(-1.5), None]
    assert response.errors[0].message == "no"


def test_total_that_overflows_is_null_with_an_error_not_inf() -> None:
    # finite weights and scores whose weighted sum overflows: inf cannot be sent as JSON (was a 500)
    results = {"a": [ScoreResult(1.0)], "b": [ScoreResult(1.0)]}
    response = assemble_response({"a": 1.7e308, "b": 1.7e308}, results, {"a": "va", "b": "vb"}, 1)
    assert response.total == [None]
    assert [(e.sample, e.reward) for e in response.errors] == [(0, "total")]
    assert "not finite" in response.errors[0].message
    json.dumps(response.model_dump(mode="json"), allow_nan=False)  # what the HTTP layer does


def test_the_images_of_one_request_have_a_decoded_pixel_budget() -> None:
    # each 4x4 image is 16 pixels; a tiny PNG can claim 16M pixels, so only a total bounds memory
    from reward_server.config import LimitsConfig

    limits = LimitsConfig(max_request_pixels=64).image_limits()
    two = ScoreRequest(rewards={"brightness": 1.0}, samples=[sample(refs=1), sample(refs=1)])  # 4 images, 64 px
    assert run(two, limits=limits).scores["brightness"] == pytest.approx([0.2, 0.2])
    three = ScoreRequest(rewards={"brightness": 1.0}, samples=[sample(refs=1)] * 2 + [sample(refs=0)])
    with pytest.raises(InvalidRequest, match=r"samples\[2\]\.image: .*more than 64 pixels"):
        run(three, limits=limits)


def test_a_cancelled_request_stops_decoding_its_images(monkeypatch) -> None:
    # the decode thread used to run to the end (GBs for a large request) after a 504
    import threading

    import shared.protocol as protocol
    from reward_server import service as service_module

    calls, finished = [], threading.Event()
    real_decode, real_samples = protocol.decode_raw, service_module.decode_samples

    def slow_decode(*args):
        calls.append(1)
        time.sleep(0.01)  # stands in for decoding a large PNG
        return real_decode(*args)

    def watched(*args):
        try:
            return real_samples(*args)
        finally:
            finished.set()

    monkeypatch.setattr(protocol, "decode_raw", slow_decode)
    monkeypatch.setattr(service_module, "decode_samples", watched)
    monkeypatch.setattr(service_module, "INLINE_RAW_PIXELS", 0)  # as if the images were large: on a thread
    rewards = make_rewards()
    request = ScoreRequest(rewards={"brightness": 1.0}, samples=[sample(refs=0)] * 200)

    async def main() -> None:
        backend = LocalBackend(rewards)
        task = asyncio.ensure_future(ScoringService(rewards, backend).score(request))
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await backend.close()

    asyncio.run(main())
    assert finished.wait(10)
    assert len(calls) < 100, f"decoded {len(calls)} of 200 images after the caller gave up"


def test_an_image_too_thin_to_score_is_refused_saying_so() -> None:
    # a 4096x1 image made `subject` null with a transformers message about its resize internals
    for encoding in ("raw", "png"):
        thin = SampleIn(image=encode_image(np.zeros((1, 4096, 3), np.uint8), encoding), prompt="p")
        with pytest.raises(InvalidRequest, match=r"samples\[0\]\.image: image is 4096x1: one side is 4096 times"):
            run(ScoreRequest(rewards={"brightness": 1.0}, samples=[thin]))
    wide = SampleIn(image=encode_image(np.zeros((64, 1024, 3), np.uint8), "raw"))  # 16:1 is fine
    assert run(ScoreRequest(rewards={"brightness": 1.0}, samples=[wide])).scores["brightness"] == [0.0]


def test_many_images_whose_size_cannot_be_read_get_the_decoders_422_not_a_503() -> None:
    # an unreadable header is charged as the largest image allowed: 33 of them (default limits) asked the
    # pixel budget for more than it can ever hold, so the request waited busy_wait_s and got 503 +
    # Retry-After (which clients retry) instead of the 422 that says what is wrong with the image
    from reward_server.limits import PixelBudget

    request = ScoreRequest(rewards={"brightness": 1.0}, samples=[SampleIn(image=b"GIF89a not a PNG")] * 40)
    with pytest.raises(InvalidRequest, match=r"samples\[0\]\.image: image bytes are neither PNG nor JPEG"):
        run(request, budget=PixelBudget(2 * ImageLimits().max_request_pixels, wait_s=0.05))


def test_a_queue_front_holds_no_pixels_while_the_workers_score() -> None:
    # the front kept each request's decoded images, and their share of limits.max_pixels_in_flight, until
    # the workers answered (they decode their own copy): a few requests waiting on busy workers filled the
    # budget, and the next one got 503 although the front held nothing it needed
    from reward_server.limits import PixelBudget
    from reward_server.queue.backend import RedisBackend

    assert RedisBackend.remote and not LocalBackend.remote
    rewards = make_rewards()

    class Workers:
        remote = True

        def __init__(self) -> None:
            self.given: list[int] = []  # decoded samples handed to each run
            self.go = asyncio.Event()

        def ready(self) -> dict[str, bool]:
            return dict.fromkeys(rewards, True)

        def unavailable(self, names: list[str]) -> None:
            return None

        async def run(self, request, samples, names):
            self.given.append(len(samples))
            await self.go.wait()
            return {name: [ScoreResult(1.0)] * len(request.samples) for name in names}

        async def close(self) -> None:
            pass

    request = ScoreRequest(rewards={"brightness": 1.0}, samples=[sample(refs=0)])  # one 4x4 image

    async def main() -> tuple[list[ScoreResponse], int]:
        workers = Workers()
        service = ScoringService(rewards, workers, budget=PixelBudget(16, wait_s=0.05))
        calls = [asyncio.ensure_future(service.score(request)) for _ in range(3)]
        deadline = time.monotonic() + 5
        while len(workers.given) < 3 and not any(c.done() for c in calls) and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        in_use = service.budget.in_use
        workers.go.set()
        assert workers.given == [0, 0, 0]
        return await asyncio.gather(*calls), in_use

    answers, in_use = asyncio.run(main())
    assert in_use == 0
    assert [a.scores["brightness"] for a in answers] == [[1.0]] * 3


def test_small_requests_are_decoded_on_the_event_loop_even_under_load(monkeypatch) -> None:
    # they went to a thread whenever another request was in flight: a hop that costs more than
    # decoding a 64 px image (README "Batching and memory"); large ones still go to a thread
    import threading

    import shared.protocol as protocol
    from reward_server import service as service_module

    decoded_on: list[str] = []
    real_decode = protocol.decode_raw

    def recording(*args):
        decoded_on.append(threading.current_thread().name)
        return real_decode(*args)

    monkeypatch.setattr(protocol, "decode_raw", recording)
    rewards = make_rewards()
    small = ScoreRequest(rewards={"brightness": 1.0}, samples=[sample(refs=0)] * 2)

    async def main() -> None:
        backend = LocalBackend(rewards)
        service = ScoringService(rewards, backend)
        try:
            await asyncio.gather(*(service.score(small) for _ in range(8)))  # 8 in flight at once
            decoded_on.append("-- large --")
            monkeypatch.setattr(service_module, "INLINE_RAW_PIXELS", 0)
            await service.score(small)
        finally:
            await backend.close()

    asyncio.run(main())
    split = decoded_on.index("-- large --")
    loop_thread = threading.current_thread().name
    assert decoded_on[:split] and set(decoded_on[:split]) == {loop_thread}
    assert decoded_on[split + 1 :] and loop_thread not in decoded_on[split + 1 :]
