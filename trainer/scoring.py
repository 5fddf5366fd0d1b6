"""A step's pending rewards: wait for each sampling batch only when the update reaches it.

Groups never span sampling batches, so with ``scale_rewards`` 'group' or 'none' a batch's
advantages depend on its own rewards only: the update trains on batch 1 while later batches
are still being scored. With 'batch' scaling, or ``normalize_then_sum`` (whose last step scales
over the whole step), the step-wide std needs every reward first.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Any

import numpy as np

from trainer.config import TrainConfig
from trainer.grpo import Advantages, RequiredRewardFailed, check_required, compute_advantages
from trainer.monitor import StepTimer
from trainer.rollout import Rollout

log = logging.getLogger(__name__)


class RewardRequestRefused(RuntimeError):
    """Scoring cannot work as configured (unknown reward, bad input, service down): stop with the reason."""


class StepScores:
    """The rollouts of one step and the Futures of their scores."""

    def __init__(self, rollouts: list[Rollout], futures: list[Future], cfg: TrainConfig, timer: StepTimer):
        self.rollouts, self.futures, self.cfg, self.timer = rollouts, futures, cfg, timer
        self._scores: dict[int, dict[str, np.ndarray]] = {}
        self._errors: dict[int, list[dict[str, Any]]] = {}
        self._full: Advantages | None = None
        self._per: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def columns(self, i: int) -> dict[str, np.ndarray]:
        """Per-reward scores of rollout ``i`` (NaN where failed), waiting for them if needed."""
        if i not in self._scores:
            with self.timer.phase("reward_wait"):
                result = self._result(self.futures[i])
            n = len(self.rollouts[i])
            names = list(self.cfg.rewards.reward_weights)
            self._scores[i] = {
                k: np.full(n, np.nan)
                if result is None
                else np.asarray(result.scores.get(k, np.full(n, np.nan)), float)
                for k in names
            }
            errors = (
                []
                if result is None
                else [e if isinstance(e, dict) else e.model_dump() for e in result.errors]
            )
            self._errors[i] = errors
            check_required(self._scores[i], self.cfg.rewards.required, errors)
        return self._scores[i]

    def _result(self, fut: Future) -> Any:
        try:
            return fut.result()
        except Exception as exc:
            status = getattr(exc, "status", None)
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                raise RewardRequestRefused(
                    f"the reward service refused the request ({status}): {exc}"
                ) from exc
            if self.cfg.rewards.required:
                raise RequiredRewardFailed(
                    f"scoring request failed and rewards {self.cfg.rewards.required} are required: {exc}"
                ) from exc
            log.warning("scoring request failed, its samples are masked: %s", exc)
            return None

    def _advantages(self, indices: list[int]) -> Advantages:
        cols = [self.columns(i) for i in indices]
        flat = {k: np.concatenate([c[k] for c in cols]) for k in cols[0]}
        g = self.cfg.grpo
        return compute_advantages(
            flat,
            self.cfg.rewards.reward_weights,
            np.concatenate([self.rollouts[i].group_ids for i in indices]),
            g.scale_rewards,
            g.multi_objective_aggregation,
            g.min_valid_per_group,
        )

    def advantages_of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(advantages, mask) of rollout ``i``; waits only for its own rewards unless scaling is step-wide."""
        g = self.cfg.grpo
        if g.scale_rewards == "batch" or g.multi_objective_aggregation == "normalize_then_sum":
            full = self.full()
            start = sum(len(r) for r in self.rollouts[:i])
            end = start + len(self.rollouts[i])
            return full.values[start:end], full.mask[start:end]
        if i not in self._per:
            adv = self._advantages([i])
            self._per[i] = (adv.values, adv.mask)
        return self._per[i]

    def full(self) -> Advantages:
        """Advantages of the whole step (waits for every reward); used for logging."""
        if self._full is None:
            self._full = self._advantages(list(range(len(self.rollouts))))
            if all(not np.isfinite(np.stack(list(c.values()))).any() for c in self._scores.values()):
                raise RewardRequestRefused(
                    "every scoring request of the step failed; is the reward service up?"
                )
        return self._full

    def flat_scores(self) -> dict[str, np.ndarray]:
        self.full()
        names = list(self.cfg.rewards.reward_weights)
        return {k: np.concatenate([self._scores[i][k] for i in range(len(self.rollouts))]) for k in names}
