"""GRPO pieces that need no model: group advantages and the clipped policy loss.

Groups are given by explicit ids (the samples drawn for one prompt + references), never by
prompt text. A sample whose reward failed (NaN) is masked; a group left with fewer than
``min_valid_per_group`` valid samples is dropped. Option names follow trl's GRPOConfig.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

ScaleRewards = Literal["group", "batch", "none"]
Aggregation = Literal["sum_then_normalize", "normalize_then_sum"]
EPS = 1e-4


class RequiredRewardFailed(RuntimeError):
    """A reward marked required failed on some sample: training must stop."""


def check_required(
    scores: Mapping[str, np.ndarray], required: Sequence[str], errors: Sequence[Mapping[str, Any]] = ()
) -> None:
    """Raise ``RequiredRewardFailed`` naming the samples and reasons if a required reward has a NaN."""
    for name in required:
        if name not in scores:
            raise RequiredRewardFailed(
                f"required reward {name!r} is missing from the reward service's answer"
            )
        bad = np.flatnonzero(~np.isfinite(np.asarray(scores[name], dtype=np.float64)))
        if bad.size:
            reasons = [e.get("message", "") for e in errors if e.get("reward") == name][:3]
            raise RequiredRewardFailed(
                f"required reward {name!r} failed on {bad.size} sample(s) (indices {bad[:10].tolist()}): "
                f"{'; '.join(reasons) or 'no reason given'}. Fix the reward service or drop {name!r} "
                f"from rewards.required to mask such samples instead."
            )


@dataclass
class Advantages:
    """Per-sample advantages (0 where masked), the mask of samples to train on, and statistics."""

    values: np.ndarray
    mask: np.ndarray
    total: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)


def _normalise(values: np.ndarray, groups: list[np.ndarray], scale: ScaleRewards) -> np.ndarray:
    """Subtract each group's mean; divide by the group's std, the batch std, or nothing."""
    out = np.zeros_like(values)
    kept = np.concatenate(groups) if groups else np.array([], dtype=int)
    batch_std = values[kept].std() if kept.size else 0.0
    for idx in groups:
        centred = values[idx] - values[idx].mean()
        if scale == "group":
            centred = centred / (values[idx].std() + EPS)
        elif scale == "batch":
            centred = centred / (batch_std + EPS)
        out[idx] = centred
    return out


def compute_advantages(
    scores: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    group_ids: Sequence[int] | np.ndarray,
    scale_rewards: ScaleRewards = "group",
    aggregation: Aggregation = "sum_then_normalize",
    min_valid_per_group: int = 2,
) -> Advantages:
    """Group-relative advantages from per-reward scores (NaN = failed), with trl's meanings:

    ``sum_then_normalize``: weighted total, centred in its group and scaled as ``scale_rewards`` says.
    ``normalize_then_sum`` (GDPO): each reward centred and scaled by its group's std, the weighted sum
    of those, then that sum centred and scaled over all kept samples (``scale_rewards`` must be 'group').
    Stds are population stds (flow_grpo's ``np.std``); trl applies Bessel's correction, which only
    scales the batch std by sqrt(N / (N - 1)) here, since each group's factor cancels in the last step.
    """
    group_ids = np.asarray(group_ids)
    n = group_ids.shape[0]
    names = [k for k, w in weights.items() if w != 0]
    missing = [k for k in names if k not in scores]
    if missing:
        raise KeyError(f"no scores for rewards {missing}; got {sorted(scores)}")
    matrix = (
        np.stack([np.asarray(scores[k], dtype=np.float64) for k in names], 1) if names else np.zeros((n, 0))
    )
    if matrix.shape[0] != n:
        raise ValueError(f"{matrix.shape[0]} scores for {n} samples")
    w = np.array([weights[k] for k in names], dtype=np.float64)
    valid = np.isfinite(matrix).all(axis=1)
    total = np.where(valid, np.nan_to_num(matrix) @ w, np.nan)

    groups, dropped, zero_std = [], 0, 0
    for gid in np.unique(group_ids):
        idx = np.flatnonzero((group_ids == gid) & valid)
        if idx.size < min_valid_per_group:
            dropped += 1
            continue
        groups.append(idx)
        zero_std += int(total[idx].std() < 1e-8)
    mask = np.zeros(n, dtype=bool)
    for idx in groups:
        mask[idx] = True

    safe_total = np.nan_to_num(total)
    if aggregation == "sum_then_normalize":
        adv = _normalise(safe_total, groups, scale_rewards)
    elif aggregation == "normalize_then_sum":
        summed = sum(
            (wk * _normalise(np.nan_to_num(matrix[:, j]), groups, "group") for j, wk in enumerate(w)),
            start=np.zeros(n),
        )
        kept = np.flatnonzero(mask)
        adv = _normalise(summed, [kept] if kept.size else [], "group")
    else:
        raise ValueError(f"unknown multi_objective_aggregation {aggregation!r}")
    adv = np.where(mask, adv, 0.0)
    used = adv[mask]
    n_groups = len(groups) + dropped
    stats = {
        "advantage/mean": float(used.mean()) if used.size else 0.0,
        "advantage/std": float(used.std()) if used.size else 0.0,
        "advantage/abs_max": float(np.abs(used).max()) if used.size else 0.0,
        "groups/zero_std_fraction": zero_std / max(len(groups), 1),
        "groups/dropped": float(dropped),
        "groups/dropped_fraction": dropped / max(n_groups, 1),
        "samples/failed": float((~valid).sum()),
    }
    return Advantages(values=adv, mask=mask, total=total, stats=stats)


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the samples where ``mask`` is true (0 when none is)."""
    if mask is None:
        return values.mean()
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1.0)


def clipped_policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    adv_clip_max: float = 5.0,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-style clipped surrogate averaged over the unmasked samples; returns the loss and diagnostics."""
    adv = advantages.clamp(-adv_clip_max, adv_clip_max)
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean(((ratio - 1.0).abs() > clip_range).float(), mask),
            "approx_kl_old": masked_mean(0.5 * (log_prob - old_log_prob) ** 2, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def gaussian_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL between two Gaussians with the same isotropic ``std``, averaged over dims, per sample.

    With ``std`` the SDE step's ``sigma_t * sqrt(|dt|)`` this is the exact KL of the step. flow_grpo
    divides by ``2 * sigma_t**2`` instead (no ``|dt|``), so its KL is this one times ``|dt|``: see
    ``flow_grpo_equivalent_beta``."""
    dims = tuple(range(1, mean.dim()))
    return ((mean - ref_mean) ** 2).mean(dim=dims) / (2 * torch.as_tensor(std, device=mean.device) ** 2)


def flow_grpo_equivalent_beta(flow_grpo_beta: float, sigmas: Sequence[float], train_steps: Sequence[int]) -> float:
    """Our ``grpo.beta`` that weighs the KL as flow_grpo's ``train.beta`` does, on average over the trained steps.

    flow_grpo's per-step KL is ``|dt_k|`` times ours, so ``beta_ours = beta_flow_grpo * |dt_k|``; with
    ``dt`` varying along the (shifted) schedule one number can only match the mean over the steps the
    loss uses."""
    s = np.asarray(sigmas, dtype=np.float64)
    dt = np.abs(np.diff(s))[list(train_steps)]
    return float(flow_grpo_beta * dt.mean())
