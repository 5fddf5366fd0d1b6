"""The contract every reward must honour, as a mixin its tests inherit.

Like diffusers' ``PipelineTesterMixin``: a reward's test module subclasses ``RewardContract``,
names the entry of the tiny config it tests, and gets these checks for free::

    class TestClipT(RewardContract):
        reward_name = "clip_t"

Subclasses may override ``make_samples`` (e.g. to give images the reward can detect subjects
in) and the tolerances. The checks run on the reward built from ``psr make-tiny``'s config and
loaded through the same ``from_pretrained`` path as real checkpoints.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np
import pytest

from reward_server.rewards import Reward, ScoreResult
from reward_server.rewards.base import PROMPT, REFERENCES, SUBJECTS
from reward_server.service import LocalBackend, ScoringService
from shared.images import encode_image
from shared.protocol import Sample, SampleIn, ScoreRequest, Subject, SubjectIn

PROMPTS = (
    "a dog wearing a red hat on a sofa",
    "a cup next to a cat",
    "a blue backpack on a beach at sunset",
    "two dogs and a toy in a garden",
    "a robot holding a teddy bear",
)
CATEGORIES = ("dog", "cup", "hat", "cat", "toy")
SIZES = ((48, 48), (64, 40), (40, 72), (33, 57), (56, 56))


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random (H, W, 3) uint8 image: blobs of colour, not pure noise."""
    coarse = rng.integers(0, 256, size=(4, 4, 3)).astype(np.float32)
    rows = np.linspace(0, 3, height)
    cols = np.linspace(0, 3, width)
    r0, c0 = np.floor(rows).astype(int).clip(0, 2), np.floor(cols).astype(int).clip(0, 2)
    fr, fc = (rows - r0)[:, None, None], (cols - c0)[None, :, None]
    top = coarse[r0][:, c0] * (1 - fc) + coarse[r0][:, c0 + 1] * fc
    bottom = coarse[r0 + 1][:, c0] * (1 - fc) + coarse[r0 + 1][:, c0 + 1] * fc
    image = top * (1 - fr) + bottom * fr + rng.normal(0, 8, size=(height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_sample(
    rng: np.random.Generator, index: int, size: tuple[int, int] = (48, 48), n_subjects: int = 2
) -> Sample:
    """A complete sample: image, prompt and subjects with reference images."""
    subjects = tuple(
        Subject(
            CATEGORIES[(index + j) % len(CATEGORIES)], random_image(rng, *SIZES[(index + j + 1) % len(SIZES)])
        )
        for j in range(n_subjects)
    )
    return Sample(image=random_image(rng, *size), prompt=PROMPTS[index % len(PROMPTS)], subjects=subjects)


def to_wire(sample: Sample) -> SampleIn:
    """The raw-uint8 wire form of a decoded sample (decodes back to identical arrays)."""
    return SampleIn(
        image=encode_image(sample.image, "raw"),
        prompt=sample.prompt,
        subjects=[
            SubjectIn(
                category=s.category,
                reference=None if s.reference is None else encode_image(s.reference, "raw"),
            )
            for s in sample.subjects
        ],
        metadata=dict(sample.metadata),
    )


def scores_of(results: Sequence[ScoreResult]) -> np.ndarray:
    return np.array([np.nan if r.score is None else r.score for r in results], dtype=np.float64)


class RewardContract:
    """Checks every reward inherits. Set ``reward_name`` to an entry of the tiny config."""

    reward_name: ClassVar[str]
    atol: ClassVar[float] = 1e-4  # batch invariance and served-equals-direct
    seed: ClassVar[int] = 1234

    @pytest.fixture
    def reward(self, load_tiny_reward: Callable[[str], Reward]) -> Reward:
        return load_tiny_reward(self.reward_name)

    def make_samples(self, n: int, sizes: Sequence[tuple[int, int]] | None = None) -> list[Sample]:
        """``n`` complete samples (override to suit the reward); the same ones on every call."""
        rng = np.random.default_rng(self.seed)
        sizes = sizes or [(48, 48)] * n
        return [make_sample(rng, i, sizes[i % len(sizes)]) for i in range(n)]

    # ---------------------------------------------------------------- shape and types
    def test_loaded_and_described(self, reward: Reward) -> None:
        assert reward.loaded
        info = reward.describe()
        json.dumps(info)
        assert info["name"] == self.reward_name and info["type"] == reward.type_name
        assert reward.type_name in reward.version

    def test_output_length_and_type(self, reward: Reward) -> None:
        samples = self.make_samples(3)
        results = reward.score(samples)
        assert isinstance(results, list) and len(results) == len(samples)
        for r in results:
            assert isinstance(r, ScoreResult)
            assert r.error is None, r.error
            assert isinstance(r.score, float) and math.isfinite(r.score)
            if r.details is not None:
                assert isinstance(r.details, dict)
                json.dumps(r.details)

    def test_empty_batch(self, reward: Reward) -> None:
        assert reward.score([]) == []

    # ---------------------------------------------------------------- numerics
    def test_deterministic(self, reward: Reward) -> None:
        samples = self.make_samples(3)
        first, second = scores_of(reward.score(samples)), scores_of(reward.score(samples))
        np.testing.assert_array_equal(first, second)

    def test_mixed_image_sizes(self, reward: Reward) -> None:
        samples = self.make_samples(len(SIZES), sizes=SIZES)
        scores = scores_of(reward.score(samples))
        assert scores.shape == (len(SIZES),) and np.isfinite(scores).all()

    def test_degenerate_image_shapes(self, reward: Reward) -> None:
        """1x1 pixels and extreme aspect ratios are legal wire images: scored, not crashed on."""
        samples = self.make_samples(3, sizes=[(1, 1), (2, 300), (300, 2)])
        scores = scores_of(reward.score(samples))
        assert scores.shape == (3,) and np.isfinite(scores).all()

    def test_batch_invariance(self, reward: Reward) -> None:
        samples = self.make_samples(4, sizes=SIZES)
        batched = scores_of(reward.score(samples))
        alone = np.concatenate([scores_of(reward.score([s])) for s in samples])
        np.testing.assert_allclose(alone, batched, rtol=0, atol=self.atol)

    # ---------------------------------------------------------------- inputs
    def test_check_sample_reports_missing_inputs(self, reward: Reward) -> None:
        complete = self.make_samples(1)[0]
        assert reward.check_sample(complete) is None
        bare = Sample(image=complete.image)
        if reward.inputs:
            why = reward.check_sample(bare)
            assert why and self.reward_name in why
        else:
            assert reward.check_sample(bare) is None
        if PROMPT in reward.inputs:
            assert reward.check_sample(Sample(image=complete.image, subjects=complete.subjects, prompt=" "))
        if SUBJECTS in reward.inputs or REFERENCES in reward.inputs:
            assert reward.check_sample(Sample(image=complete.image, prompt=complete.prompt))
        if REFERENCES in reward.inputs:
            no_ref = (*complete.subjects[:-1], Subject(complete.subjects[-1].category, None))
            why = reward.check_sample(Sample(image=complete.image, prompt=complete.prompt, subjects=no_ref))
            assert why and str(len(no_ref) - 1) in why

    # ---------------------------------------------------------------- serving
    def test_served_equals_direct(self, reward: Reward) -> None:
        samples = self.make_samples(3, sizes=SIZES)
        direct = reward.score(samples)
        request = ScoreRequest(rewards={self.reward_name: 2.0}, samples=[to_wire(s) for s in samples])

        async def serve() -> object:
            backend = LocalBackend({self.reward_name: reward})
            try:
                return await ScoringService({self.reward_name: reward}, backend).score(request)
            finally:
                await backend.close()

        response = asyncio.run(serve())
        served = np.array(response.scores[self.reward_name], dtype=np.float64)
        np.testing.assert_allclose(served, scores_of(direct), rtol=0, atol=self.atol)
        np.testing.assert_allclose(np.array(response.total, dtype=np.float64), 2.0 * served, rtol=1e-12)
        assert response.errors == []
        assert response.versions[self.reward_name] == reward.version

    # ---------------------------------------------------------------- output
    def test_decoded_images_score_without_warnings(self, reward: Reward, monkeypatch: pytest.MonkeyPatch) -> None:
        """Images decoded from PNG/JPEG are read-only arrays; handing one to ``torch.from_numpy``
        prints a warning in the server's log (once per process, so it is caught at the call)."""
        import warnings

        import torch

        from shared.images import decode_compressed

        def png(image: np.ndarray) -> np.ndarray:
            return decode_compressed(encode_image(image, "png"))  # what the server hands rewards

        samples = [Sample(image=png(s.image), prompt=s.prompt, metadata=s.metadata,
                          subjects=tuple(Subject(c.category, None if c.reference is None else png(c.reference))
                                         for c in s.subjects)) for s in self.make_samples(2)]
        from_numpy = torch.from_numpy

        def writable_only(array: np.ndarray) -> torch.Tensor:
            assert array.flags.writeable, "torch.from_numpy on a read-only array (PyTorch warns 'not writable')"
            return from_numpy(array)

        monkeypatch.setattr(torch, "from_numpy", writable_only)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            reward.score(samples)
