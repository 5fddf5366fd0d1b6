"""The reward-function shapes other projects already use, backed by the reward service.

* ``make_reward_fn``: ``reward_fn(images, prompts, metadata) -> (scores, info)`` as diffusion RL
  codebases (flow_grpo, DDPO-style trainers) expect.
* ``make_trl_reward``: a reward function for trl's ``GRPOTrainer``
  (``reward_func(prompts, completions, **dataset_columns) -> list[float | None]``) for policies
  whose text outputs are scored against images, e.g. a captioner scored with ``clip_t``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from shared.client import RewardClient


def _subjects_from_metadata(metadata: Sequence[dict[str, Any]] | None, n: int) -> list[list] | None:
    if not metadata or not any("subjects" in (m or {}) for m in metadata):
        return None
    return [list((m or {}).get("subjects", [])) for m in metadata[:n]]


def make_reward_fn(
    client: RewardClient, rewards: dict[str, float]
) -> Callable[..., tuple[dict[str, np.ndarray], dict[str, Any]]]:
    """A ``reward_fn(images, prompts, metadata)`` returning per-reward arrays plus ``"total"``.

    ``metadata[i]["subjects"]`` (a list of ``{"category", "reference"}``) is sent as the sample's
    subjects; the rest of each metadata dict is passed through. ``info`` carries the errors,
    details and reward versions. Failed scores are NaN.
    """

    def reward_fn(
        images: Sequence[Any], prompts: Sequence[str] | None = None, metadata: Sequence[dict] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        subjects = _subjects_from_metadata(metadata, len(images))
        extra = None
        if metadata:
            extra = [{k: v for k, v in (m or {}).items() if k != "subjects"} for m in metadata]
        res = client.score(images, rewards, prompts=prompts, subjects=subjects, metadata=extra)
        scores = {**res.scores, "total": res.total}
        return scores, {"errors": res.errors, "details": res.details, "versions": res.versions}

    return reward_fn


def _completion_text(completion: Any) -> str:
    """trl passes plain strings or conversations (lists of {role, content})."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # multimodal message parts
            return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)
    raise TypeError(f"cannot read a completion of type {type(completion).__name__}")


def make_trl_reward(
    client: RewardClient, reward: str = "clip_t", image_column: str = "image"
) -> Callable[..., list[float | None]]:
    """A trl GRPOTrainer reward function scoring each completion's text against the row's image.

    The dataset must have ``image_column`` (PIL image, array or tensor). Failed scores are
    ``None``, which trl treats as missing rather than as 0.
    """

    def reward_func(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        if image_column not in columns:
            raise KeyError(f"the dataset has no {image_column!r} column; columns: {sorted(columns)}")
        images = columns[image_column]
        texts = [_completion_text(c) for c in completions]
        res = client.score(images, {reward: 1.0}, prompts=texts)
        return [None if not np.isfinite(v) else float(v) for v in res.scores[reward]]

    reward_func.__name__ = f"psr_{reward}"
    return reward_func
