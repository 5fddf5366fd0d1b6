"""What every training algorithm shares: the policy, the step loop with its progress bar, TensorBoard,
checkpoints and exact resume, and stopping cleanly on SIGINT/SIGTERM.

Steps are numbered from 1: "step 3" is the third training step; its metrics are logged at 3, its
sample grid is ``samples/step-000003.png`` and the checkpoint written after it is
``checkpoints/step-000003`` (``--resume`` from it runs step 4 next).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import config_hash
from trainer.checkpoint import find_latest, load_checkpoint, save_checkpoint
from trainer.config import TrainConfig
from trainer.monitor import Monitor
from trainer.policy import build_policy

log = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM: the step in progress finished and a checkpoint was saved."""

    def __init__(self, signal_name: str, step: int, total: int, checkpoint: Path | None):
        self.signal_name, self.step, self.total, self.checkpoint = signal_name, step, total, checkpoint
        super().__init__(f"{signal_name}: stopped after step {step} of {total}; checkpoint saved to {checkpoint}")


class RunFinished(Exception):
    """``--resume`` of a run whose every step is done."""

    def __init__(self, step: int, total: int, checkpoint: Path | None):
        self.step, self.total, self.checkpoint = step, total, checkpoint
        super().__init__(
            f"the run is finished: {step} of run.steps = {total} steps are done (checkpoint {checkpoint}); "
            "raise run.steps to train longer"
        )


class RunExists(Exception):
    """A new run (no ``--resume``) in a ``run.output_dir`` that holds another run's checkpoints."""

    def __init__(self, output_dir: Path, checkpoint: Path):
        self.output_dir, self.checkpoint = output_dir, checkpoint
        super().__init__(
            f"run.output_dir {output_dir} already holds a run (newest checkpoint {checkpoint.name}); a new run there "
            "would mix its checkpoints with those (the newest step number wins, older ones are pruned): continue "
            "it with --resume, or give another run.output_dir"
        )


class StopSignals:
    """Turns SIGINT/SIGTERM into a request to stop after the current step; a second signal acts at once."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name
        signal.signal(signum, self._previous[signum])  # the next one interrupts as usual
        log.warning("%s received: finishing the current step, then saving a checkpoint (again to stop now)",
                    self.received)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """One training run. Subclasses give ``train_step`` (the algorithm) and ``optimizer_steps``."""

    desc = "train"
    headline = ("train/loss", "loss")  # (metric, label) shown per step by the progress bar and `psr train`

    def __init__(self, cfg: TrainConfig, base_dir: Path = Path(".")):
        self.cfg = cfg
        self.base_dir = base_dir
        self.policy = build_policy(cfg, self.optimizer_steps())
        self.acc = self.policy.accelerator
        self.rank = self.acc.process_index
        self.out = Path(cfg.run.output_dir)
        self.hash = config_hash(
            cfg.model_dump(exclude={"run": {"steps", "output_dir"}, "rewards": {"url", "api_key", "ready_timeout_s", "connect_timeout_s"}})
        )
        self.monitor = Monitor(self.out / "tensorboard" if self.acc.is_main_process else None)
        self.start_step = 0
        self.history: list[dict[str, float]] = []
        self.last_grid: Path | None = None

    def optimizer_steps(self) -> int:
        """Optimizer steps of the whole run (the LR schedule's length)."""
        raise NotImplementedError

    def train_step(self, step: int) -> dict[str, float]:
        """Run training step ``step`` (1-based) and return its metrics."""
        raise NotImplementedError

    def begin(self) -> None:
        """Called once before step 1 of a new run (not on resume)."""

    def postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        """What the progress bar shows after a step."""
        key, label = self.headline
        return {label: f"{metrics.get(key, float('nan')):.4f}"}

    def resume(self, checkpoint: str | Path) -> int:
        """Continue from a checkpoint folder, or the newest one when ``checkpoint`` is 'latest'."""
        path = find_latest(self.out) if str(checkpoint) == "latest" else Path(checkpoint)
        if path is None:
            log.info("no checkpoint under %s: starting from step 1", self.out)
            return 0
        p = self.policy
        step, saved_hash = load_checkpoint(path, p.transformer, p.optimizer, p.lr_scheduler, p.ema)
        if saved_hash != self.hash:
            log.warning("checkpoint %s was written with a different config (%s != %s)", path, saved_hash, self.hash)
        self.start_step = step
        log.info("resumed from %s after step %d", path, step)
        return step

    def train(self, progress: bool = True, stop_after: int | None = None) -> dict[str, Any]:
        """Steps ``start_step + 1`` .. ``run.steps``; checkpoints on schedule and when stopped by a signal.

        ``stop_after`` ends the run early after that step (as if interrupted there)."""
        from tqdm.auto import tqdm

        total = self.cfg.run.steps
        if self.start_step >= total:
            raise RunFinished(self.start_step, total, find_latest(self.out))
        end = total if stop_after is None else min(stop_after, total)
        bar = tqdm(
            range(self.start_step + 1, end + 1),
            initial=self.start_step,
            total=total,
            disable=not (progress and self.acc.is_main_process),
            desc=self.desc,
        )
        with self._cpu_threads(), StopSignals() as signals:
            if self.start_step == 0:
                self.begin()
            for step in bar:
                metrics = self.train_step(step)
                self.start_step = step  # a later train() continues after it
                self.history.append({**metrics, "step": step})
                self.monitor.scalars(metrics, step)
                bar.set_postfix(**self.postfix(metrics))
                scheduled = step % self.cfg.run.save_every == 0 or step == total
                if scheduled:
                    self.save(step)
                if self._stop_requested(signals):
                    if not scheduled:  # every process calls save (it waits for all); rank 0 writes
                        self.save(step)
                    self.monitor.close()
                    raise TrainingInterrupted(signals.received or "signal", step, total, find_latest(self.out))
        self.monitor.close()
        return self.summary()

    def _stop_requested(self, signals: StopSignals) -> bool:
        """True on every process once any process got a signal (they must save and stop together)."""
        if signals.received:
            self.acc.set_trigger()
        return bool(self.acc.check_trigger())

    def log_grid(self, grid: Any, step: int) -> None:
        """Save a sample grid as ``samples/step-N.png`` and to TensorBoard (main process)."""
        path = self.out / "samples" / f"step-{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        self.last_grid = path
        self.monitor.grid(grid, step)

    def grid_due(self, step: int) -> bool:
        every = self.cfg.run.image_every
        return self.acc.is_main_process and (step % every == 0 or step in (1, self.cfg.run.steps))

    def _cpu_threads(self) -> contextlib.AbstractContextManager:
        """Use ``model.cpu_threads`` torch threads during training on the CPU, then restore."""
        from reward_server.models.device import torch_threads

        on_cpu = self.acc.device.type == "cpu"
        return torch_threads(self.cfg.model.cpu_threads if on_cpu else None)

    def gather(self, values: np.ndarray) -> np.ndarray:
        """Every process's values (all processes pass the same count)."""
        if self.acc.num_processes == 1:
            return values
        import torch

        return self.acc.gather(torch.as_tensor(values, device=self.acc.device)).cpu().numpy()

    def save(self, step: int) -> Path | None:
        """Checkpoint on the main process (LoRA, EMA, optimizer, scheduler, RNG, step)."""
        self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            return None
        p = self.policy
        return save_checkpoint(
            self.out, step, p.transformer, p.optimizer, p.lr_scheduler, p.ema, self.hash,
            self.cfg.run.keep_checkpoints, p.lora_meta,
        )

    def summary(self) -> dict[str, Any]:
        """Metrics per step and where the artefacts are."""
        latest = find_latest(self.out)
        key, label = self.headline
        return {
            "steps": [int(h["step"]) for h in self.history],
            "headline": label,
            "headline_values": [h.get(key) for h in self.history],
            "loss": [h.get("train/loss") for h in self.history],
            "tensorboard_dir": str(self.monitor.log_dir) if self.monitor.log_dir else None,
            "sample_grid": str(self.last_grid) if self.last_grid else None,
            "checkpoint": str(latest) if latest else None,
            "output_dir": str(self.out),
            "main_process": self.acc.is_main_process,
        }
