"""SDE sampling of a flow-matching model with per-step log-probabilities (Flow-GRPO, arXiv 2505.05470).

The flow ODE ``dx = v(x, t) dt`` (t from 1 = noise to 0 = data) has the same marginals as the SDE

    dx = [v(x, t) + sigma_t^2 / (2t) * (x + (1 - t) v(x, t))] dt + sigma_t dw,  sigma_t = a * sqrt(t / (1 - t))

An Euler-Maruyama step from ``t`` to ``t + dt`` (dt < 0) is a Gaussian with

    mean = x + [v + sigma_t^2 / (2t) * (x + (1 - t) v)] dt,    std = sigma_t * sqrt(-dt)

whose log-density of the sampled next latent is the policy's log-probability of that action.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from trainer.pipeline import Conditioning, MultiRefGenerator

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sde_step_distribution(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    noise_level: float,
    sigma_cap: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the Gaussian step ``x_sigma -> x_sigma_next``.

    ``sigma_cap`` (the schedule's second noise level) replaces ``sigma = 1`` in ``1 - sigma``, where
    the diffusion coefficient would be infinite. Computed in float32.
    """
    x, v = x.float(), v.float()
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    sigma_next = torch.as_tensor(sigma_next, dtype=torch.float32, device=x.device)
    dt = sigma_next - sigma
    one_minus = 1.0 - torch.where(sigma >= 1.0, torch.as_tensor(sigma_cap, device=x.device), sigma)
    diffusion = noise_level * torch.sqrt(sigma / one_minus)
    mean = x + (v + diffusion**2 / (2 * sigma) * (x + (1 - sigma) * v)) * dt
    std = diffusion * torch.sqrt(-dt)
    return mean, std


def gaussian_log_prob(
    x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, reduce: str = "mean"
) -> torch.Tensor:
    """Log-density of ``x_next`` under N(mean, std^2 I), per sample; ``reduce`` 'mean' or 'sum' over dims.

    Flow-GRPO averages over latent dimensions ('mean'), which keeps importance ratios near 1
    regardless of the resolution; 'sum' is the exact joint log-density.
    """
    std = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    per_dim = -((x_next.float() - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    dims = tuple(range(1, per_dim.dim()))
    if reduce == "mean":
        return per_dim.mean(dim=dims)
    if reduce == "sum":
        return per_dim.sum(dim=dims)
    raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")


@dataclass
class Trajectory:
    """A batch of sampled trajectories: ``latents[:, k]`` is the state before step ``k``."""

    latents: torch.Tensor  # (B, T + 1, S, C), float32, on the CPU
    log_probs: torch.Tensor  # (B, T)
    sigmas: torch.Tensor  # (T + 1,)

    @property
    def final(self) -> torch.Tensor:
        return self.latents[:, -1]


@torch.no_grad()
def sample_sde(
    velocity: VelocityFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    noise_level: float,
    generator: torch.Generator,
) -> Trajectory:
    """Integrate from ``noise`` along ``sigmas`` with SDE steps, recording latents and log-probs.

    Step noise is drawn on the CPU from ``generator`` so a seed gives the same trajectory anywhere.
    """
    x = noise.float()
    states, log_probs = [x.cpu()], []
    sigma_cap = float(sigmas[1]) if len(sigmas) > 1 else 0.0
    for k in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[k].to(x.device), sigmas[k + 1].to(x.device)
        v = velocity(x, sigma)
        mean, std = sde_step_distribution(x, v, sigma, sigma_next, noise_level, sigma_cap)
        eps = torch.randn(x.shape, generator=generator).to(x.device)
        x = mean + std * eps
        log_probs.append(gaussian_log_prob(x, mean, std).cpu())
        states.append(x.cpu())
    return Trajectory(torch.stack(states, 1), torch.stack(log_probs, 1), sigmas.cpu())


def step_log_prob(
    velocity: VelocityFn, traj_latents: torch.Tensor, sigmas: torch.Tensor, k: int, noise_level: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-prob (with gradients through ``velocity``) of the recorded step ``k``; also mean and std.

    ``traj_latents`` is (B, T + 1, S, C) on the model's device.
    """
    sigma_cap = float(sigmas[1]) if len(sigmas) > 1 else 0.0
    x, x_next = traj_latents[:, k], traj_latents[:, k + 1]
    sigma = sigmas[k].to(x.device)
    v = velocity(x, sigma)
    mean, std = sde_step_distribution(x, v, sigma, sigmas[k + 1].to(x.device), noise_level, sigma_cap)
    return gaussian_log_prob(x_next, mean, std), mean, std


@torch.no_grad()
def sample_ode(
    gen: MultiRefGenerator,
    transformer: torch.nn.Module,
    cond: Conditioning,
    sigmas: torch.Tensor,
    seeds: Sequence[int],
    size: int,
    guidance_scale: float,
) -> torch.Tensor:
    """Euler steps of the flow ODE from per-sample seeded noise; returns the final packed latents.

    Each sample's noise comes from its own seed, so an image does not depend on its batch."""
    x = torch.cat([gen.initial_noise(1, size, size, torch.Generator().manual_seed(int(s))) for s in seeds])
    x = x.to(gen.dtype)
    for k in range(len(sigmas) - 1):
        v = gen.velocity(transformer, x, sigmas[k].to(x.device), cond, guidance_scale=guidance_scale)
        x = x + (sigmas[k + 1] - sigmas[k]).to(x.device, x.dtype) * v
    return x
