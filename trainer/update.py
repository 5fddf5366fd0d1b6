"""The policy update: clipped-ratio loss on recorded SDE steps, optional KL, gradient accumulation."""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch

from trainer.config import TrainConfig
from trainer.grpo import clipped_policy_loss, gaussian_kl, masked_mean
from trainer.policy import Policy
from trainer.rollout import Rollout
from trainer.sampling import step_log_prob


def micro_batches(
    rollouts: list[Rollout], size: int, rng: np.random.Generator
) -> list[tuple[int, np.ndarray]]:
    """(rollout index, sample indices) in sampling order, samples shuffled within each rollout.

    Rollout order is kept so the update reaches a batch's rewards as late as possible.
    """
    out = []
    for r_i, r in enumerate(rollouts):
        order = rng.permutation(len(r))
        out += [(r_i, np.sort(order[start : start + size])) for start in range(0, len(r), size)]
    return out


def optimizer_steps_per_epoch(cfg: TrainConfig) -> int:
    """Optimizer steps per pass over a step's samples: the same on every process.

    Processes may split their samples into different numbers of micro-batches (reference
    layouts differ), but each has at least ``ceil(N / train_batch_size)`` of them, so a count
    derived from N alone lets every process all-reduce gradients the same number of times.
    """
    s, o = cfg.sampling, cfg.optim
    n = s.group_size * s.prompts_per_batch * s.batches_per_step
    micro = math.ceil(n / o.train_batch_size)
    return math.ceil(micro / o.gradient_accumulation_steps)


def optimise(
    policy: Policy,
    rollouts: list[Rollout],
    advantages_of: Callable[[int], tuple[np.ndarray, np.ndarray]],
    cfg: TrainConfig,
    step: int,
    rank: int = 0,
) -> dict[str, float]:
    """Run ``inner_epochs`` passes over the step's samples; returns averaged diagnostics.

    ``advantages_of(i)`` gives rollout ``i``'s (advantages, mask); it may block until its rewards arrive.
    """
    acc, gen, model = policy.accelerator, policy.gen, policy.model
    g, o, m, s = cfg.grpo, cfg.optim, cfg.model, cfg.sampling
    ks = cfg.train_step_indices()
    rng = np.random.default_rng([cfg.run.seed, step, rank, 1])
    sums: dict[str, float] = defaultdict(float)
    count, grad_norm = 0, float("nan")
    model.train()
    for _ in range(g.inner_epochs):
        batches = micro_batches(rollouts, o.train_batch_size, rng)
        chunks = np.array_split(np.arange(len(batches)), optimizer_steps_per_epoch(cfg))
        chunk_of = {int(i): c for c in chunks for i in c}
        for i, (r_i, local) in enumerate(batches):
            r = rollouts[r_i]
            if i == chunk_of[i][0]:
                # the optimizer step averages over the chunk's unmasked samples, so a micro-batch
                # of masked (failed or dropped-group) samples never dilutes or inflates the others
                chunk_valid = sum(int(advantages_of(batches[c][0])[1][batches[c][1]].sum()) for c in chunk_of[i])
            sync = i == chunk_of[i][-1]
            device = acc.device
            idx = torch.as_tensor(local)
            cond = r.cond.index(idx).to(device)
            neg = None if r.negative is None else r.negative.index(idx).to(device)
            latents = r.trajectory.latents[idx].to(device)
            old = r.trajectory.log_probs[idx].to(device)
            adv_values, adv_mask = advantages_of(r_i)
            advantages = torch.as_tensor(adv_values[local], dtype=torch.float32, device=device)
            mask = torch.as_tensor(adv_mask[local], device=device)
            n_valid = int(adv_mask[local].sum())
            weight = n_valid / max(chunk_valid, 1)  # masked_mean's share of the chunk's sample mean

            def velocity(x, sigma, net=model, cond=cond, neg=neg):
                return gen.velocity(
                    net, x.to(cond.prompt_embeds.dtype), sigma, cond, m.guidance_scale, neg, s.cfg_scale
                ).float()

            for j, k in enumerate(ks):
                # gradients are all-reduced once per optimizer step: on the last backward before it
                with contextlib.nullcontext() if sync and j + 1 == len(ks) else acc.no_sync(model):
                    with acc.autocast():
                        log_prob, mean, std = step_log_prob(
                            velocity, latents, r.trajectory.sigmas, k, s.noise_level
                        )
                    loss, stats = clipped_policy_loss(
                        log_prob, old[:, k], advantages, g.clip_range, g.adv_clip_max, mask
                    )
                    if g.beta > 0:
                        with torch.no_grad(), policy.reference() as ref, acc.autocast():
                            _, ref_mean, _ = step_log_prob(
                                lambda x, sg, ref=ref: velocity(x, sg, net=ref),
                                latents,
                                r.trajectory.sigmas,
                                k,
                                s.noise_level,
                            )
                        kl = masked_mean(gaussian_kl(mean, ref_mean, std), mask)
                        loss = loss + g.beta * kl
                        sums["kl"] += kl.item() * n_valid
                    # a fully masked micro-batch still runs its backward: every process syncs alike
                    acc.backward(loss * weight / len(ks))
                    sums["loss"] += loss.item() * n_valid
                    for key, value in stats.items():
                        sums[key] += value.item() * n_valid
                    count += n_valid
            if sync:
                grad_norm = policy.optimizer_step(o.max_grad_norm)
    model.eval()
    out = {f"train/{k}": v / count for k, v in sums.items()} if count else {}  # per trained sample
    out["train/grad_norm_last"] = grad_norm
    out["train/lr"] = policy.lr_scheduler.get_last_lr()[0]
    return out
