"""Advantages, loss and SDE log-probs on hand-made tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.grpo import (
    RequiredRewardFailed,
    check_required,
    clipped_policy_loss,
    compute_advantages,
    flow_grpo_equivalent_beta,
    gaussian_kl,
)
from trainer.sampling import gaussian_log_prob, sample_sde, sde_step_distribution, step_log_prob


def test_group_normalisation_uses_explicit_ids_not_order():
    scores = {"r": np.array([1.0, 5.0, 2.0, 7.0, 3.0, 9.0])}
    groups = [0, 1, 0, 1, 0, 1]  # interleaved
    adv = compute_advantages(scores, {"r": 1.0}, groups, scale_rewards="group")
    g0 = np.array([1.0, 2.0, 3.0])
    expected0 = (g0 - g0.mean()) / (g0.std() + 1e-4)
    np.testing.assert_allclose(adv.values[[0, 2, 4]], expected0, rtol=1e-6)
    g1 = np.array([5.0, 7.0, 9.0])
    np.testing.assert_allclose(adv.values[[1, 3, 5]], (g1 - g1.mean()) / (g1.std() + 1e-4), rtol=1e-6)
    assert adv.mask.all()


def test_scale_batch_and_none():
    scores = {"r": np.array([0.0, 2.0, 10.0, 30.0])}
    groups = [0, 0, 1, 1]
    none = compute_advantages(scores, {"r": 1.0}, groups, scale_rewards="none")
    np.testing.assert_allclose(none.values, [-1.0, 1.0, -10.0, 10.0])
    batch = compute_advantages(scores, {"r": 1.0}, groups, scale_rewards="batch")
    np.testing.assert_allclose(batch.values, none.values / (scores["r"].std() + 1e-4))


def test_sum_then_normalize():
    scores = {"a": np.array([0.0, 1.0, 0.0, 1.0]), "b": np.array([0.0, 100.0, 100.0, 0.0])}
    weights = {"a": 1.0, "b": 0.01}
    groups = [0, 0, 1, 1]
    s = compute_advantages(scores, weights, groups, aggregation="sum_then_normalize")
    # totals: [0, 2, 1, 1] -> group 1 has zero std
    np.testing.assert_allclose(s.values[:2], [-1.0, 1.0], atol=1e-3)
    np.testing.assert_allclose(s.values[2:], [0.0, 0.0], atol=1e-9)
    assert s.stats["groups/zero_std_fraction"] == 0.5


def trl_normalize_then_sum(rewards_per_func: np.ndarray, weights: np.ndarray, g: int, ddof: int) -> np.ndarray:
    """trl 1.16 GRPOTrainer, ``multi_objective_aggregation == "normalize_then_sum"``, rows grouped by g.

    ``ddof=1`` is trl's ``nanstd`` (Bessel's correction); ``ddof=0`` is the population std we use."""
    grouped = rewards_per_func.reshape(-1, g, rewards_per_func.shape[1])
    mean_k = grouped.mean(axis=1, keepdims=True)
    std_k = grouped.std(axis=1, keepdims=True, ddof=ddof)
    reward_k = ((grouped - mean_k) / (std_k + 1e-4)).reshape(-1, rewards_per_func.shape[1])
    rewards = (reward_k * weights[None, :]).sum(axis=1)
    return (rewards - rewards.mean()) / (rewards.std(ddof=ddof) + 1e-4)


def test_normalize_then_sum_is_trls_gdpo_rule():
    rng = np.random.default_rng(0)
    g, n_groups = 4, 3
    a = rng.normal(0, 1, g * n_groups)
    b = rng.normal(50, 30, g * n_groups)  # another scale: per-reward normalisation makes it not dominate
    weights = np.array([0.7, 0.3])
    expected = trl_normalize_then_sum(np.stack([a, b], 1), weights, g, ddof=0)
    # our groups by explicit ids, in a shuffled order
    order = rng.permutation(g * n_groups)
    ids = np.repeat(np.arange(n_groups), g)
    adv = compute_advantages(
        {"a": a[order], "b": b[order]}, {"a": 0.7, "b": 0.3}, ids[order], aggregation="normalize_then_sum"
    )
    np.testing.assert_allclose(adv.values, expected[order], rtol=1e-6, atol=1e-9)
    # the result is normalised over the whole batch (not per group): mean 0, std 1
    assert abs(adv.values.mean()) < 1e-9 and adv.values.std() == pytest.approx(1.0, abs=1e-3)
    # trl's Bessel-corrected std differs only by sqrt((N - 1) / N) overall
    bessel = trl_normalize_then_sum(np.stack([a, b], 1), weights, g, ddof=1)
    n = g * n_groups
    np.testing.assert_allclose(bessel, expected * np.sqrt((n - 1) / n), rtol=2e-3, atol=1e-6)


def test_normalize_then_sum_ignores_masked_samples():
    a = np.array([0.0, 1.0, 2.0, np.nan, 5.0, 1.0])
    adv = compute_advantages({"a": a}, {"a": 1.0}, [0, 0, 0, 1, 1, 1], aggregation="normalize_then_sum")
    assert adv.mask.tolist() == [True, True, True, False, True, True]
    kept = np.array([0.0, 1.0, 2.0, 5.0, 1.0])
    per_group = np.concatenate([(kept[:3] - 1.0) / (kept[:3].std() + 1e-4), (kept[3:] - 3.0) / (2.0 + 1e-4)])
    expected = (per_group - per_group.mean()) / (per_group.std() + 1e-4)
    np.testing.assert_allclose(adv.values[adv.mask], expected, rtol=1e-6)
    assert adv.values[3] == 0.0


def test_failed_samples_are_masked_and_small_groups_dropped():
    scores = {"r": np.array([1.0, np.nan, 3.0, np.nan, np.nan, 4.0]), "z": np.zeros(6)}
    groups = [0, 0, 0, 1, 1, 1]
    adv = compute_advantages(scores, {"r": 1.0, "z": 0.5}, groups, min_valid_per_group=2)
    assert adv.mask.tolist() == [True, False, True, False, False, False]
    assert adv.values[1] == 0 and adv.values[5] == 0
    np.testing.assert_allclose(adv.values[[0, 2]], [-1.0, 1.0], atol=1e-3)
    assert adv.stats["groups/dropped"] == 1 and adv.stats["samples/failed"] == 3
    assert math.isnan(adv.total[1])
    # a reward with weight 0 does not mask
    adv2 = compute_advantages(
        {"r": np.ones(2), "off": np.array([np.nan, np.nan])}, {"r": 1, "off": 0}, [0, 0]
    )
    assert adv2.mask.all()


def test_required_reward_failure_is_a_clear_error():
    errors = [{"sample": 2, "reward": "judge", "message": "judge answer could not be parsed"}]
    with pytest.raises(RequiredRewardFailed, match=r"judge.*indices \[2\].*could not be parsed"):
        check_required({"judge": np.array([0.1, 0.2, np.nan])}, ["judge"], errors)
    check_required({"judge": np.array([0.1, 0.2]), "other": np.array([np.nan, 1])}, ["judge"])
    with pytest.raises(RequiredRewardFailed, match="missing"):
        check_required({}, ["judge"])


def test_clipped_loss_by_hand():
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.0, 1.5, 0.5, 1.1]))
    adv = torch.tensor([1.0, 1.0, -1.0, -2.0])
    loss, stats = clipped_policy_loss(new, old, adv, clip_range=0.2, adv_clip_max=5.0)
    # per sample max(-A r, -A clip(r)): [-1, -1.2, 0.8, 2.2]
    assert loss.item() == pytest.approx((-1 - 1.2 + 0.8 + 2.2) / 4, rel=1e-6)
    assert stats["clip_fraction"].item() == pytest.approx(0.5)
    # clipped samples carry no gradient in the direction that would exceed the trust region
    new = new.clone().requires_grad_(True)
    clipped_policy_loss(new, old, adv, 0.2)[0].backward()
    assert new.grad[1] == 0 and new.grad[2] == 0 and new.grad[0] != 0 and new.grad[3] != 0
    # advantage clipping
    loss_c, _ = clipped_policy_loss(
        torch.zeros(1), torch.zeros(1), torch.tensor([10.0]), 0.2, adv_clip_max=3.0
    )
    assert loss_c.item() == pytest.approx(-3.0)


def test_gaussian_kl_matches_torch_distributions():
    mean, ref, std = torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.tensor(0.3)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, std), torch.distributions.Normal(ref, std)
    ).mean(dim=(1, 2))
    torch.testing.assert_close(gaussian_kl(mean, ref, std), expected)


def test_sde_log_prob_equals_direct_gaussian_density():
    torch.manual_seed(0)
    x, v = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    sigma, sigma_next, a = torch.tensor(0.6), torch.tensor(0.45), 0.7
    mean, std = sde_step_distribution(x, v, sigma, sigma_next, a, sigma_cap=0.9)
    # the equations written out directly
    dt = sigma_next - sigma
    diff = a * math.sqrt(0.6 / 0.4)
    exp_mean = x + (v + diff**2 / (2 * 0.6) * (x + 0.4 * v)) * dt
    torch.testing.assert_close(mean, exp_mean)
    assert std.item() == pytest.approx(diff * math.sqrt(0.15), rel=1e-6)
    x_next = mean + std * torch.randn_like(x)
    normal = torch.distributions.Normal(mean, std)
    direct = normal.log_prob(x_next)
    torch.testing.assert_close(gaussian_log_prob(x_next, mean, std, reduce="sum"), direct.sum(dim=(1, 2)))
    torch.testing.assert_close(gaussian_log_prob(x_next, mean, std), direct.mean(dim=(1, 2)))
    mvn = torch.distributions.MultivariateNormal(
        mean.reshape(3, -1), covariance_matrix=std**2 * torch.eye(32)
    )
    torch.testing.assert_close(
        gaussian_log_prob(x_next, mean, std, reduce="sum"), mvn.log_prob(x_next.reshape(3, -1))
    )


def test_sampler_records_log_probs_that_recompute_exactly():
    torch.manual_seed(0)
    weight = torch.randn(8, 8) * 0.1

    def velocity(x, sigma):
        return x @ weight - sigma

    sigmas = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0])
    noise = torch.randn(2, 4, 8)
    traj = sample_sde(velocity, noise, sigmas, 0.7, torch.Generator().manual_seed(1))
    assert traj.latents.shape == (2, 5, 4, 8) and traj.log_probs.shape == (2, 4)
    assert torch.isfinite(traj.log_probs).all()
    for k in range(4):
        lp, _, _ = step_log_prob(velocity, traj.latents, sigmas, k, 0.7)
        torch.testing.assert_close(lp, traj.log_probs[:, k])
    # same seed -> same trajectory; a different velocity -> lower likelihood of the recorded steps
    again = sample_sde(velocity, noise, sigmas, 0.7, torch.Generator().manual_seed(1))
    torch.testing.assert_close(again.latents, traj.latents)
    lp_other, _, _ = step_log_prob(lambda x, s: velocity(x, s) + 1.0, traj.latents, sigmas, 1, 0.7)
    assert (lp_other < traj.log_probs[:, 1]).all()


def test_masked_samples_do_not_enter_the_loss():
    old = torch.zeros(3)
    new = torch.tensor([0.1, -0.1, 5.0], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 100.0])
    mask = torch.tensor([True, True, False])
    loss, _ = clipped_policy_loss(new, old, adv, clip_range=1.0, mask=mask)
    ref, _ = clipped_policy_loss(new[:2], old[:2], adv[:2], clip_range=1.0)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert new.grad[2] == 0


def test_our_kl_is_flow_grpos_divided_by_the_step_size():
    """flow_grpo (train_sd3.py): kl = ((mean - mean_ref)**2).mean() / (2 * std_dev_t**2), std_dev_t the
    diffusion coefficient without sqrt(|dt|); ours divides by the step's variance std_dev_t**2 * |dt|."""
    g = torch.Generator().manual_seed(0)
    x, v, v_ref = (torch.randn(2, 4, 8, generator=g) for _ in range(3))
    sigmas = torch.tensor([1.0, 0.8, 0.55, 0.3, 0.0])
    for k in (1, 2):
        mean, std = sde_step_distribution(x, v, sigmas[k], sigmas[k + 1], 0.7, float(sigmas[1]))
        ref_mean, _ = sde_step_distribution(x, v_ref, sigmas[k], sigmas[k + 1], 0.7, float(sigmas[1]))
        dt = float(sigmas[k] - sigmas[k + 1])
        std_dev_t = 0.7 * torch.sqrt(sigmas[k] / (1 - sigmas[k]))
        flow_grpo_kl = ((mean - ref_mean) ** 2).mean(dim=(1, 2)) / (2 * std_dev_t**2)
        torch.testing.assert_close(gaussian_kl(mean, ref_mean, std) * dt, flow_grpo_kl, rtol=1e-5, atol=1e-8)
    # beta * KL_ours == beta_flow_grpo * KL_flow_grpo on average over the trained steps
    assert flow_grpo_equivalent_beta(0.04, sigmas.tolist(), [1, 2]) == pytest.approx(0.04 * (0.25 + 0.25) / 2)
