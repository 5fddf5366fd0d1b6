"""The reward-function shapes other projects already use, backed by the reward service.

Each adapter drops into the named library's loop unchanged (tests run those loops' own calls):

* ``make_reward_fn``: flow_grpo's ``reward_fn(images, prompts, prompt_metadata, only_strict=True)
  -> (rewards, reward_metadata)``; ``rewards`` holds one array per reward plus ``"avg"``, the
  weighted total, which flow_grpo trains on.
* ``make_ddpo_reward_fn``: ddpo-pytorch's ``reward_fn(images, prompts, prompt_metadata) ->
  (rewards, reward_metadata)`` where ``rewards`` is one array of weighted totals (ddpo does
  ``torch.as_tensor(rewards)``).
* ``make_trl_reward``: a reward function for trl's ``GRPOTrainer``
  (``reward_func(prompts, completions, **dataset_columns) -> list[float | None]``) that scores
  each completion's *text* against the row's image with a text-image reward such as ``clip_t``:
  for policies that write about images (captioners, VLMs).

A score that failed must not silently become a number. The diffusion adapters take
``on_failure``: ``"raise"`` (default: ``RewardFailed`` with the service's reasons, the run stops),
``"nan"`` (NaN where a score failed; mask them yourself -- flow_grpo's per-prompt statistics
would otherwise spread one NaN to the whole group), or a number substituted for failed scores,
logged and listed in ``reward_metadata["failed"]`` (flow_grpo's evaluation skips ``-10``).
trl's adapter returns None for a failed score, which trl treats as missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from shared.client import RewardClient, RewardServiceError, Scores

log = logging.getLogger(__name__)

OnFailure = Literal["raise", "nan"] | float
AVG = "avg"  # flow_grpo's name for the weighted total


class RewardFailed(RewardServiceError):
    """Some scores of a batch failed and the adapter was asked to raise (``on_failure="raise"``)."""


def _subjects_from_metadata(metadata: Sequence[dict[str, Any]] | None, n: int) -> list[list] | None:
    if not metadata or not any("subjects" in (m or {}) for m in metadata):
        return None
    return [list((m or {}).get("subjects", [])) for m in metadata[:n]]


def _check_on_failure(on_failure: OnFailure) -> None:
    if on_failure in ("raise", "nan"):
        return
    if isinstance(on_failure, bool) or not isinstance(on_failure, (int, float)) or not np.isfinite(on_failure):
        raise ValueError(f"on_failure must be 'raise', 'nan' or a finite number to substitute, got {on_failure!r}")


def _score(client: RewardClient, rewards: dict[str, float], images: Any, prompts: Sequence[str] | None,
           metadata: Sequence[dict] | None) -> Scores:
    """Score a batch; ``metadata[i]["subjects"]`` becomes the sample's subjects, the rest is passed on."""
    n = len(images)
    subjects = _subjects_from_metadata(metadata, n)
    extra = None
    if metadata:
        extra = [{k: v for k, v in (m or {}).items() if k != "subjects"} for m in list(metadata)[:n]]
    return client.score(images, rewards, prompts=list(prompts) if prompts is not None else None,
                        subjects=subjects, metadata=extra)


def _apply_policy(res: Scores, rewards: dict[str, float], on_failure: OnFailure) -> tuple[dict[str, np.ndarray],
                                                                                          np.ndarray, list[int]]:
    """Per-reward columns and totals after the failure policy; also the indices of failed samples."""
    failed = sorted({e["sample"] for e in res.errors} | set(np.flatnonzero(~np.isfinite(res.total)).tolist()))
    columns = {name: res.scores[name].copy() for name in rewards}
    if not failed or on_failure == "nan":
        return columns, res.total.copy(), failed
    reasons = "; ".join(f"sample {e['sample']}: {e['reward']}: {e['message']}" for e in res.errors[:5])
    more = f" (and {len(res.errors) - 5} more)" if len(res.errors) > 5 else ""
    if on_failure == "raise":
        raise RewardFailed(f"{len(failed)} of {len(res)} samples have failed scores: {reasons}{more}. Pass "
                           "on_failure=<number> to substitute (reported) or 'nan' to mask them yourself")
    value = float(on_failure)
    for column in columns.values():
        column[~np.isfinite(column)] = value
    total = sum(weight * columns[name] for name, weight in rewards.items())
    log.warning("%d of %d samples have failed scores, substituted %g: %s%s", len(failed), len(res), value,
                reasons, more)
    return columns, np.asarray(total, dtype=np.float64), failed


def _info(res: Scores, failed: list[int]) -> dict[str, Any]:
    return {"errors": res.errors, "details": res.details, "versions": res.versions, "failed": failed}


def make_reward_fn(
    client: RewardClient, rewards: dict[str, float], on_failure: OnFailure = "raise"
) -> Callable[..., tuple[dict[str, np.ndarray], dict[str, Any]]]:
    """flow_grpo's reward function: ``reward_fn(images, prompts, metadata, only_strict=True)``.

    Returns ``({reward: scores, ..., "avg": weighted total}, info)``; ``info`` has the errors,
    details, reward versions and the indices of failed samples. ``images`` may be a (N, 3, H, W)
    tensor in [0, 1] (flow_grpo's ``output_type="pt"``, on any device), PIL images or arrays.
    ``only_strict`` is flow_grpo's GenEval switch and changes nothing here.
    """
    if AVG in rewards:
        raise ValueError(f"a reward named {AVG!r} would clash with flow_grpo's weighted total; rename it")
    _check_on_failure(on_failure)

    def reward_fn(images: Any, prompts: Sequence[str] | None = None, metadata: Sequence[dict] | None = None,
                  only_strict: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        res = _score(client, rewards, images, prompts, metadata)
        columns, total, failed = _apply_policy(res, rewards, on_failure)
        return {**columns, AVG: total}, _info(res, failed)

    return reward_fn


def make_ddpo_reward_fn(
    client: RewardClient, rewards: dict[str, float], on_failure: OnFailure = "raise"
) -> Callable[..., tuple[np.ndarray, dict[str, Any]]]:
    """ddpo-pytorch's reward function: ``reward_fn(images, prompts, metadata) -> (totals, info)``.

    ``totals`` is a float64 array of weighted totals (``torch.as_tensor`` takes it); the
    per-reward scores are in ``info["scores"]`` next to errors, details, versions and ``failed``.
    """
    _check_on_failure(on_failure)

    def reward_fn(images: Any, prompts: Sequence[str] | None = None,
                  metadata: Sequence[dict] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        res = _score(client, rewards, images, prompts, metadata)
        columns, total, failed = _apply_policy(res, rewards, on_failure)
        return total, {**_info(res, failed), "scores": columns}

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


def _row_image(value: Any, row: int, column: str, image_index: int | None) -> Any:
    """The image of one dataset row: trl's ``image`` column holds one, its ``images`` column a list."""
    if not isinstance(value, (list, tuple)):
        return value
    if image_index is not None:
        if not -len(value) <= image_index < len(value):
            raise ValueError(f"row {row} of column {column!r} has {len(value)} images; image_index={image_index}")
        return value[image_index]
    if len(value) != 1:
        raise ValueError(f"row {row} of column {column!r} has {len(value)} images; say which one the completion "
                         "is scored against with make_trl_reward(..., image_index=k)")
    return value[0]


def make_trl_reward(
    client: RewardClient, reward: str = "clip_t", image_column: str = "image", image_index: int | None = None
) -> Callable[..., list[float | None]]:
    """A trl GRPOTrainer reward function scoring each completion's text against the row's image.

    ``reward`` is a text-image reward of the service (``clip_t``, ``pickscore``...); the score is
    how well the completion describes the row's image. ``image_column`` is trl's ``image`` (one
    PIL image, array or tensor per row) or ``images`` (a list per row: its only image, or the one
    at ``image_index``). Failed scores are ``None``, which trl treats as missing rather than as 0.
    """

    def reward_func(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        if image_column not in columns:
            shown = sorted(k for k in columns if k not in ("trainer_state", "log_extra", "log_metric"))
            raise KeyError(f"the dataset has no {image_column!r} column; columns: {shown}")
        images = [_row_image(v, i, image_column, image_index) for i, v in enumerate(columns[image_column])]
        texts = [_completion_text(c) for c in completions]
        res = client.score(images, {reward: 1.0}, prompts=texts)
        return [None if not np.isfinite(v) else float(v) for v in res.scores[reward]]

    reward_func.__name__ = f"psr_{reward}"
    return reward_func
