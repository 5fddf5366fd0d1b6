"""Flow-GRPO training loop: sample, score (overlapped), compute advantages, optimise."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import config_hash
from trainer.checkpoint import find_latest, load_checkpoint, save_checkpoint
from trainer.config import TrainConfig
from trainer.monitor import Monitor, StepTimer, score_grid
from trainer.policy import build_policy
from trainer.preflight import check_hosted_rewards
from trainer.rollout import load_items, pick_items, sample_group_batch, submit_scores
from trainer.scoring import StepScores
from trainer.update import optimise, optimizer_steps_per_epoch

log = logging.getLogger(__name__)


def make_reward_client(cfg: TrainConfig) -> Any:
    """The HTTP reward client for ``rewards.url``."""
    if not cfg.rewards.url:
        raise ValueError("rewards.url is not set: point it at a reward server (psr serve) or pass a client")
    from shared.client import RewardClient

    r = cfg.rewards
    return RewardClient(
        r.url, api_key=r.api_key, timeout=r.timeout_s, max_retries=r.max_retries, image_format=r.image_format
    )


class FlowGRPOTrainer:
    """One training run; ``train()`` is the whole algorithm."""

    def __init__(self, cfg: TrainConfig, reward_client: Any = None, base_dir: Path = Path(".")):
        self.cfg = cfg
        self.client = reward_client if reward_client is not None else make_reward_client(cfg)
        check_hosted_rewards(self.client, cfg)  # before the generator loads (minutes for a real one)
        self.items = load_items(cfg.data, base_dir)
        opt_steps = optimizer_steps_per_epoch(cfg) * cfg.grpo.inner_epochs
        self.policy = build_policy(cfg, opt_steps * cfg.run.steps)
        self.acc = self.policy.accelerator
        self.rank = self.acc.process_index
        self.out = Path(cfg.run.output_dir)
        self.hash = config_hash(
            cfg.model_dump(exclude={"run": {"steps", "output_dir"}, "rewards": {"url", "api_key"}})
        )
        self.monitor = Monitor(self.out / "tensorboard" if self.acc.is_main_process else None)
        self.start_step = 0
        self.history: list[dict[str, float]] = []
        self.last_grid: Path | None = None

    def resume(self, checkpoint: str | Path) -> int:
        """Continue from a checkpoint folder, or the newest one when ``checkpoint`` is 'latest'."""
        path = find_latest(self.out) if str(checkpoint) == "latest" else Path(checkpoint)
        if path is None:
            log.info("no checkpoint under %s: starting from step 0", self.out)
            return 0
        step, saved_hash = load_checkpoint(
            path, self.policy.transformer, self.policy.optimizer, self.policy.lr_scheduler, self.policy.ema
        )
        if saved_hash != self.hash:
            log.warning(
                "checkpoint %s was written with a different config (%s != %s)", path, saved_hash, self.hash
            )
        self.start_step = step
        log.info("resumed from %s at step %d", path, step)
        return step

    def train(self, progress: bool = True, stop_after: int | None = None) -> dict[str, Any]:
        """The main loop: sample, score, advantages, optimise; log and checkpoint.

        ``stop_after`` ends the run early after that many steps (as if interrupted there).
        """
        from tqdm.auto import tqdm

        end = self.cfg.run.steps if stop_after is None else min(stop_after, self.cfg.run.steps)
        bar = tqdm(
            range(self.start_step, end),
            initial=self.start_step,
            total=self.cfg.run.steps,
            disable=not (progress and self.acc.is_main_process),
            desc="flow-grpo",
        )
        with self._cpu_threads():
            for step in bar:
                metrics = self.train_step(step)
                bar.set_postfix(
                    reward=f"{metrics['reward/total_mean']:.4f}",
                    wait=f"{metrics.get('time/reward_wait_fraction', 0):.0%}",
                )
        self.monitor.close()
        return self.summary()

    def _cpu_threads(self) -> contextlib.AbstractContextManager:
        """Use ``model.cpu_threads`` torch threads during training on the CPU, then restore."""
        from reward_server.models.device import torch_threads

        on_cpu = self.acc.device.type == "cpu"
        return torch_threads(self.cfg.model.cpu_threads if on_cpu else None)

    def train_step(self, step: int) -> dict[str, float]:
        """One step: sample, score, advantages, optimise; then log and maybe checkpoint."""
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
        metrics = self.report(step, batch, metrics, timer)
        if (step + 1) % self.cfg.run.save_every == 0 or step + 1 == self.cfg.run.steps:
            self.save(step + 1)
        return metrics

    def collect(self, step: int, timer: StepTimer) -> StepScores:
        """Sample every batch of the step, sending each for scoring as soon as it exists."""
        s = self.cfg.sampling
        items = pick_items(
            self.items, s.prompts_per_batch * s.batches_per_step, self.cfg.run.seed, step, self.rank
        )
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
        return StepScores(rollouts, futures, self.cfg, timer)

    def report(
        self, step: int, batch: StepScores, metrics: dict[str, float], timer: StepTimer
    ) -> dict[str, float]:
        """Rewards per reward, totals, advantage statistics, timing; a sample grid now and then."""
        adv, rollouts = batch.full(), batch.rollouts
        metrics = {**metrics, **timer.metrics()}
        columns = {**batch.flat_scores(), "total": adv.total}
        for k, col in columns.items():
            col = self._gather(col)  # every process's samples (all processes sample the same count)
            finite = np.isfinite(col)
            metrics[f"reward/{k}_mean"] = float(col[finite].mean()) if finite.any() else float("nan")
            metrics[f"reward/{k}_std"] = float(col[finite].std()) if finite.any() else float("nan")
        metrics.update(adv.stats)
        metrics["step"] = step
        self.history.append(metrics)
        self.monitor.scalars(metrics, step)
        last = step + 1 == self.cfg.run.steps
        if self.acc.is_main_process and ((step + 1) % self.cfg.run.image_every == 0 or last or step == 0):
            images = [img for r in rollouts for img in r.images][:24]
            labels = [f"{t:.3f}" if np.isfinite(t) else "failed" for t in adv.total[:24]]
            grid = score_grid(images, labels, columns=self.cfg.sampling.group_size)
            path = self.out / "samples" / f"step-{step:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            grid.save(path)
            self.last_grid = path
            self.monitor.grid(grid, step)
        return metrics

    def _gather(self, values: np.ndarray) -> np.ndarray:
        if self.acc.num_processes == 1:
            return values
        import torch

        return self.acc.gather(torch.as_tensor(values, device=self.acc.device)).cpu().numpy()

    def save(self, step: int) -> Path | None:
        """Checkpoint on the main process (LoRA, optimizer, scheduler, EMA, RNG, step)."""
        self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            return None
        p = self.policy
        return save_checkpoint(
            self.out,
            step,
            p.transformer,
            p.optimizer,
            p.lr_scheduler,
            p.ema,
            self.hash,
            self.cfg.run.keep_checkpoints,
        )

    def summary(self) -> dict[str, Any]:
        """Reward per step and where the artefacts are."""
        return {
            "steps": [int(h["step"]) for h in self.history],
            "reward_mean": [h["reward/total_mean"] for h in self.history],
            "loss": [h.get("train/loss") for h in self.history],
            "reward_wait_fraction": [h.get("time/reward_wait_fraction") for h in self.history],
            "tensorboard_dir": str(self.monitor.log_dir) if self.monitor.log_dir else None,
            "sample_grid": str(self.last_grid) if self.last_grid else None,
            "checkpoint": str(find_latest(self.out)) if find_latest(self.out) else None,
            "output_dir": str(self.out),
            "main_process": self.acc.is_main_process,
        }


def run_training(
    config: TrainConfig,
    reward_client: Any = None,
    progress: bool = True,
    resume: str | Path | None = None,
    base_dir: Path = Path("."),
) -> dict[str, Any]:
    """Train as configured; returns the summary (reward per step, TensorBoard dir, sample grid PNG)."""
    trainer = FlowGRPOTrainer(config, reward_client, base_dir)
    try:
        if resume:
            trainer.resume(resume)
        return trainer.train(progress=progress)
    finally:
        if reward_client is None:  # the client made here from rewards.url
            trainer.client.close()
