"""The supervised flow-matching (rectified flow) objective, as FLUX/SD3 fine-tuning scripts compute it.

A target latent ``x0`` is noised to ``x_s = (1 - s) x0 + s n`` at a noise level ``s`` in (0, 1]; the
model predicts the velocity ``n - x0`` (``dx/ds``; sampling integrates it from s = 1 to 0). Noise
levels are drawn as diffusers' training scripts draw them (``compute_density_for_timestep_sampling``:
a density ``u`` on [0, 1], the scheduler's ``num_train_timesteps`` grid, ``s = 1 - floor(u N) / N``),
optionally shifted as the scheduler shifts sampling at the training resolution; the loss is the
mean squared error on the target tokens, weighted as ``compute_loss_weighting_for_sd3``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

SCHEMES = ("logit_normal", "mode", "none", "sigma_sqrt", "cosmap")


def timestep_density(
    scheme: str, n: int, logit_mean: float, logit_std: float, mode_scale: float, generator: torch.Generator
) -> torch.Tensor:
    """``n`` draws of ``u`` in [0, 1]: logit-normal, SD3's 'mode' density, or uniform (every other scheme)."""
    if scheme == "logit_normal":
        return torch.sigmoid(torch.normal(logit_mean, logit_std, size=(n,), generator=generator))
    u = torch.rand(size=(n,), generator=generator)
    if scheme == "mode":
        return 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


def sample_sigmas(
    n: int,
    scheme: str,
    generator: torch.Generator,
    num_train_timesteps: int = 1000,
    shift: Callable[[np.ndarray], np.ndarray] | None = None,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
) -> torch.Tensor:
    """Noise levels of ``n`` training samples, float32 on the CPU."""
    u = timestep_density(scheme, n, logit_mean, logit_std, mode_scale, generator)
    index = (u * num_train_timesteps).long().clamp(0, num_train_timesteps - 1)
    sigmas = 1.0 - index.double() / num_train_timesteps  # the scheduler's unshifted training grid
    if shift is not None:
        sigmas = torch.from_numpy(np.asarray(shift(sigmas.numpy()), dtype=np.float64))
    return sigmas.float()


def loss_weighting(scheme: str, sigmas: torch.Tensor) -> torch.Tensor:
    """Per-sample loss weights: 1/s^2 ('sigma_sqrt'), SD3's cosmap, else 1."""
    if scheme == "sigma_sqrt":
        return sigmas.float() ** -2.0
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))
    return torch.ones_like(sigmas)


def noised(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """``(1 - s) x0 + s n`` with one ``s`` per sample."""
    s = sigmas.view(-1, *([1] * (x0.dim() - 1))).to(x0)
    return (1 - s) * x0 + s * noise


def flow_matching_loss(
    v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Weighted MSE between predicted and true velocity ``n - x0``, averaged per sample: shape (B,)."""
    err = (v_pred.float() - (noise - x0).float()) ** 2
    return weights.to(err).view(-1) * err.reshape(err.shape[0], -1).mean(dim=1)
