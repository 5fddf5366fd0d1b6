"""Cheap rewards without a model: for demos, learning tests and queue benchmarks.

``brightness`` and ``color`` are rewards a tiny generator can learn on the CPU; ``fixed_cost``
takes a set time per batch (so a benchmark measures the serving path, not the CPU) and can be
told to fail or crash on chosen prompts to exercise the fault handling.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
from pydantic import Field

from reward_server.rewards import register
from reward_server.rewards.base import Reward, ScoreResult
from shared.config import StrictModel
from shared.protocol import Sample


@register
class BrightnessReward(Reward):
    """Mean pixel value in [0, 1]."""

    type_name = "brightness"
    description = "mean pixel intensity in [0, 1] (no model)"

    def load(self) -> None:
        pass

    def score(self, samples: Sequence[Sample]) -> list[ScoreResult]:
        return [ScoreResult(float(s.image.mean()) / 255.0) for s in samples]


class ColorOptions(StrictModel):
    target: tuple[int, int, int] = Field(default=(255, 0, 0), description="RGB colour to reward")


@register
class ColorReward(Reward):
    """1 - mean distance of the pixels to a target colour, in [0, 1]."""

    type_name = "color"
    description = "closeness of the image's pixels to a target RGB colour, in [0, 1] (no model)"
    Options = ColorOptions

    def load(self) -> None:
        self._target = np.asarray(self.options.target, dtype=np.float32)

    def score(self, samples: Sequence[Sample]) -> list[ScoreResult]:
        out = []
        max_dist = np.sqrt(3) * 255.0
        for s in samples:
            dist = np.linalg.norm(s.image.astype(np.float32) - self._target, axis=-1).mean()
            out.append(ScoreResult(float(1.0 - dist / max_dist)))
        return out


class FixedCostOptions(StrictModel):
    seconds_per_batch: float = Field(default=0.0, ge=0, description="time each batch takes")
    seconds_per_sample: float = Field(default=0.0, ge=0, description="extra time per sample")
    fail_on: str | None = Field(default=None, description="raise for batches holding a prompt with this text")
    crash_on: str | None = Field(default=None, description="kill the process on a prompt with this text")
    error_on: str | None = Field(default=None, description="per-sample failure on prompts with this text")


@register
class FixedCostReward(Reward):
    """Scores ``len(prompt) % 10 / 10`` after a fixed delay: a stand-in for a model's cost."""

    type_name = "fixed_cost"
    description = "deterministic score after a set delay per batch; for benchmarks and fault tests"
    Options = FixedCostOptions

    def load(self) -> None:
        pass

    def score(self, samples: Sequence[Sample]) -> list[ScoreResult]:
        opts = self.options
        if opts.crash_on and any(opts.crash_on in s.prompt for s in samples):
            os._exit(17)
        if opts.fail_on and any(opts.fail_on in s.prompt for s in samples):
            raise RuntimeError(f"fixed_cost was told to fail on {opts.fail_on!r}")
        delay = opts.seconds_per_batch + opts.seconds_per_sample * len(samples)
        if delay:
            time.sleep(delay)
        return [
            ScoreResult.failed(f"fixed_cost was told to fail on {opts.error_on!r}")
            if opts.error_on and opts.error_on in s.prompt
            else ScoreResult(len(s.prompt) % 10 / 10.0, details={"prompt_length": len(s.prompt)})
            for s in samples
        ]
