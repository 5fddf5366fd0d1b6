"""The reward contract for the subject, position and judge rewards of the tiny config."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.protocol import Sample
from tests.reward_contract import RewardContract, make_sample


class TestSubjectGroundingDino(RewardContract):
    reward_name = "subject"


class TestSubjectOwlv2(RewardContract):
    reward_name = "subject_owl"


class TestPosition(RewardContract):
    reward_name = "position"

    def make_samples(self, n: int, sizes: Sequence[tuple[int, int]] | None = None) -> list[Sample]:
        rng = np.random.default_rng(self.seed)
        sizes = sizes or [(48, 48)] * n
        relations = ["to the left of", "above", "next to", "under", "on the right of"]
        out = []
        for i in range(n):
            base = make_sample(rng, i, sizes[i % len(sizes)])
            a, b = (s.category for s in base.subjects)
            out.append(Sample(image=base.image, prompt=f"a {a} {relations[i % 5]} a {b}", subjects=base.subjects))
        return out


class TestJudge(RewardContract):
    reward_name = "judge"
