"""Flow-GRPO training: sample, score (overlapped), compute advantages, optimise; and ``run_training``,
which runs the trainer a config's ``algorithm`` names."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import ConfigError
from trainer.checkpoint import checkpoint_step, find_latest
from trainer.config import TrainConfig
from trainer.mixing import ReferenceMix
from trainer.monitor import StepTimer, score_grid
from trainer.preflight import check_hosted_rewards
from trainer.rollout import load_items, sample_group_batch, submit_scores
from trainer.run import RunExists, RunFinished, Trainer
from trainer.scoring import StepScores
from trainer.update import optimise, optimizer_steps_per_epoch

log = logging.getLogger(__name__)


def make_reward_client(cfg: TrainConfig) -> Any:
    """The HTTP reward client for ``rewards.url``."""
    if not cfg.rewards.url:
        raise ValueError("rewards.url is not set: point it at a reward server (psr serve) or pass a client")
    from shared.client import RewardClient

    r = cfg.rewards
    return RewardClient(  # the API key comes from PSR_API_KEY / PSR_API_KEY_FILE (shared.api_keys)
        r.url, timeout=r.timeout_s, max_retries=r.max_retries, image_format=r.image_format
    )


class FlowGRPOTrainer(Trainer):
    """Flow-GRPO: ``train_step`` is the whole algorithm."""

    desc = "flow-grpo"
    headline = ("reward/total_mean", "reward")

    def __init__(self, cfg: TrainConfig, reward_client: Any = None, base_dir: Path = Path(".")):
        self.client = reward_client if reward_client is not None else make_reward_client(cfg)
        check_hosted_rewards(self.client, cfg)  # before the generator loads (minutes for a real one)
        self.items = load_items(cfg.data, base_dir)
        self.mix = ReferenceMix([len(it.references) for it in self.items], cfg.data.reference_mix)
        super().__init__(cfg, base_dir)

    def optimizer_steps(self) -> int:
        return optimizer_steps_per_epoch(self.cfg) * self.cfg.grpo.inner_epochs * self.cfg.run.steps

    def postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        return {**super().postfix(metrics), "wait": f"{metrics.get('time/reward_wait_fraction', 0):.0%}"}

    def train_step(self, step: int) -> dict[str, float]:
        """Sample, score (overlapped), advantages, optimise; then report."""
        timer = StepTimer()
        batch = self.collect(step, timer)  # every sampling batch is scored while the next is sampled
        metrics = {}
        if self.cfg.grpo.update_policy:  # trains on each batch as soon as its rewards are in
            with timer.phase("update"):
                metrics = optimise(
                    self.policy, batch.rollouts, batch.advantages_of, self.cfg, step, self.rank
                )
        with timer.phase("reward_wait"):
            batch.full()  # waits for any reward the update did not need
        return self.report(step, batch, metrics, timer)

    def collect(self, step: int, timer: StepTimer) -> StepScores:
        """Sample every batch of the step, sending each for scoring as soon as it exists."""
        s = self.cfg.sampling
        rng = np.random.default_rng([self.cfg.run.seed, step, self.rank])
        items = [self.items[i] for i in self.mix.draw(rng, s.prompts_per_batch * s.batches_per_step)]
        rollouts, futures = [], []
        for b in range(s.batches_per_step):
            chunk = items[b * s.prompts_per_batch : (b + 1) * s.prompts_per_batch]
            seed = int(np.random.SeedSequence([self.cfg.run.seed, step, self.rank, b]).generate_state(1)[0])
            with timer.phase("rollout"):
                batch = sample_group_batch(
                    self.policy.gen, self.policy.transformer, chunk, self.cfg, b * s.prompts_per_batch, seed
                )
            for r in batch:
                with timer.phase("reward_wait"):  # a blocking client spends the scoring time here
                    futures.append(submit_scores(self.client, r, self.cfg))
                rollouts.append(r)
        return StepScores(rollouts, futures, self.cfg, timer, self.gather)

    def report(
        self, step: int, batch: StepScores, metrics: dict[str, float], timer: StepTimer
    ) -> dict[str, float]:
        """Rewards per reward, totals, advantage statistics, timing; a sample grid now and then."""
        adv, rollouts = batch.full(), batch.rollouts
        metrics = {**metrics, **timer.metrics()}
        columns = {**batch.flat_scores(), "total": adv.total}
        for k, col in columns.items():
            col = self.gather(col)  # every process's samples (all processes sample the same count)
            finite = np.isfinite(col)
            metrics[f"reward/{k}_mean"] = float(col[finite].mean()) if finite.any() else float("nan")
            metrics[f"reward/{k}_std"] = float(col[finite].std()) if finite.any() else float("nan")
        metrics.update(adv.stats)
        if self.grid_due(step):  # the rollouts this step trained on
            images = [img for r in rollouts for img in r.images][:24]
            labels = [f"{t:.3f}" if np.isfinite(t) else "failed" for t in adv.total[:24]]
            self.log_grid(score_grid(images, labels, columns=self.cfg.sampling.group_size), step)
        return metrics

    def summary(self) -> dict[str, Any]:
        """Reward per step and where the artefacts are."""
        return {
            **super().summary(),
            "reward_mean": [h["reward/total_mean"] for h in self.history],
            "reward_wait_fraction": [h.get("time/reward_wait_fraction") for h in self.history],
        }


def run_training(
    config: TrainConfig,
    reward_client: Any = None,
    progress: bool = True,
    resume: str | Path | None = None,
    base_dir: Path = Path("."),
) -> dict[str, Any]:
    """Train as configured (``algorithm``: grpo or sft); returns the summary (metric per step, TensorBoard
    dir, sample grid PNG, checkpoint). Raises ``RunFinished`` when resuming a finished run, ``RunExists``
    when a new run would write where another one's checkpoints are, and ``TrainingInterrupted`` after
    saving on SIGINT/SIGTERM."""
    out = Path(config.run.output_dir)
    if resume:  # a finished run or a wrong path says so before any model loads or the server is asked
        path = find_latest(out) if str(resume) == "latest" else Path(resume)
        if path is not None and not path.is_dir():
            raise ConfigError(f"--resume {resume}: no such checkpoint folder; give one of "
                              f"{out / 'checkpoints'}/step-N, or --resume alone for the newest")
        if path is not None and (path / "trainer_state.json").is_file() and checkpoint_step(path) >= config.run.steps:
            raise RunFinished(checkpoint_step(path), config.run.steps, path)
    elif (latest := find_latest(out)) is not None:
        raise RunExists(out, latest)
    if config.algorithm == "sft":
        from trainer.sft import SFTTrainer

        trainer: Trainer = SFTTrainer(config, base_dir)
    else:
        trainer = FlowGRPOTrainer(config, reward_client, base_dir)
    try:
        if config.algorithm == "grpo" and reward_client is None:  # a server started beside us may still be loading
            trainer.client.wait_until_ready(config.rewards.ready_timeout_s, rewards=list(config.rewards.reward_weights))
        if resume:
            trainer.resume(resume)
        return trainer.train(progress=progress)
    finally:
        if config.algorithm == "grpo" and reward_client is None:  # the client made here from rewards.url
            trainer.client.close()
