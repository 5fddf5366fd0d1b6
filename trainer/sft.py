"""Supervised fine-tuning (``algorithm: sft``): flow matching on (references, instruction, target) items.

The first stage of the PSR recipe: it teaches a single-reference model (FLUX.1 Kontext) to take
several references. References sit in the target's token sequence with the same frame-wise ids
as in GRPO (``MultiRefGenerator.condition``); only the target tokens' velocity enters the loss. A
step is one optimizer step over ``gradient_accumulation_steps`` micro-batches of
``train_batch_size`` items sharing one reference count (drawn by ``data.reference_mix``).
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainer.config import TrainConfig
from trainer.dataset import SFT_RULES, DataItem, load_dataset, load_image
from trainer.flow_matching import flow_matching_loss, loss_weighting, noised, sample_sigmas
from trainer.mixing import ReferenceMix
from trainer.monitor import score_grid
from trainer.pipeline import pack_latents, to_uint8_images
from trainer.run import Trainer
from trainer.sampling import sample_ode

log = logging.getLogger(__name__)


class SFTTrainer(Trainer):
    """Supervised flow matching with the GRPO trainer's policy, checkpoints and logging."""

    desc = "sft"
    headline = ("train/loss", "loss")

    def __init__(self, cfg: TrainConfig, base_dir: Path = Path(".")):
        file = Path(cfg.data.file)
        self.root, self.items = load_dataset(file if file.is_absolute() else base_dir / file, SFT_RULES)
        self.mix = ReferenceMix([len(it.input_paths) for it in self.items], cfg.data.reference_mix)
        super().__init__(cfg, base_dir)

    def optimizer_steps(self) -> int:
        return self.cfg.run.steps

    def begin(self) -> None:
        if self.acc.is_main_process:
            self.monitor.scalars(self.validate(0), 0)  # the model before training, for comparison

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step over the accumulated micro-batches; a validation grid when due."""
        acc, o, p = self.acc, self.cfg.optim, self.policy
        losses, sigmas = [], []
        p.model.train()
        for micro in range(o.gradient_accumulation_steps):
            rng = np.random.default_rng([self.cfg.run.seed, step, self.rank, micro])
            batch = [self.items[i] for i in self.mix.draw_batch(rng, o.train_batch_size)]
            noise_rng = torch.Generator().manual_seed(int(rng.integers(2**62)))
            last = micro + 1 == o.gradient_accumulation_steps
            with contextlib.nullcontext() if last else acc.no_sync(p.model):  # all-reduce once per step
                with acc.autocast():
                    loss, s = self.loss(batch, noise_rng)
                acc.backward(loss.mean() / o.gradient_accumulation_steps)
            losses.append(loss.detach().float().cpu())
            sigmas.append(s)
        grad_norm = p.optimizer_step(o.max_grad_norm)
        p.model.eval()
        metrics = self.loss_metrics(self.gather(torch.cat(losses).numpy()), self.gather(torch.cat(sigmas).numpy()))
        metrics.update({"train/grad_norm": grad_norm, "train/lr": p.lr_scheduler.get_last_lr()[0]})
        if self.grid_due(step):
            metrics.update(self.validate(step))
        return metrics

    def loss(self, batch: list[DataItem], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample flow-matching loss of a micro-batch and its noise levels."""
        gen, m, f = self.policy.gen, self.cfg.model, self.cfg.sft
        size = m.resolution
        cond = gen.condition(
            [it.instruction for it in batch], [self.references(it) for it in batch], size, size, m.reference_size
        )
        x0 = pack_latents(gen.encode_images([load_image(self.root / it.target_path) for it in batch], size, size))
        noise = gen.initial_noise(len(batch), size, size, generator)
        shift = (lambda s: gen.shift_sigmas(s, size, size)) if f.timestep_shift == "auto" else None
        sigmas = sample_sigmas(
            len(batch), f.weighting_scheme, generator, gen.scheduler.config.get("num_train_timesteps", 1000),
            shift, f.logit_mean, f.logit_std, f.mode_scale,
        )
        x_t = noised(x0.float(), noise.float(), sigmas)
        v = gen.velocity(self.policy.model, x_t.to(cond.prompt_embeds.dtype), sigmas.to(x_t.device), cond,
                         m.guidance_scale)
        weights = loss_weighting(f.weighting_scheme, sigmas).to(x_t.device)
        return flow_matching_loss(v, x0, noise, weights), sigmas

    def loss_metrics(self, losses: np.ndarray, sigmas: np.ndarray) -> dict[str, float]:
        """Mean loss, and per noise-level bucket so a person sees which timesteps improve."""
        out = {"train/loss": float(losses.mean())}
        n = self.cfg.sft.loss_buckets
        bucket = np.minimum((sigmas * n).astype(int), n - 1)
        per: dict[int, list[float]] = defaultdict(list)
        for b, loss in zip(bucket, losses, strict=True):
            per[int(b)].append(float(loss))
        for b, values in sorted(per.items()):
            out[f"train/loss_sigma_{b / n:.2f}-{(b + 1) / n:.2f}"] = float(np.mean(values))
        return out

    def references(self, item: DataItem) -> list[np.ndarray]:
        return [load_image(self.root / r) for r in item.input_paths]

    @torch.no_grad()
    def validate(self, step: int) -> dict[str, float]:
        """Generate the first ``sft.validation_items`` items with fixed seeds (EMA weights when on); log the
        grid (references, target, generated per row) and the pixel MSE to the targets."""
        items = self.items[: self.cfg.sft.validation_items]
        if not items:
            return {}
        images = self.generate(items)
        size = self.cfg.model.resolution
        targets = [_resized(load_image(self.root / it.target_path), size) for it in items]
        mse = float(np.mean([((a / 255.0 - b / 255.0) ** 2).mean() for a, b in zip(images, targets, strict=True)]))
        width = max(len(it.input_paths) for it in items) + 2
        blank = np.full((size, size, 3), 255, np.uint8)
        cells, labels = [], []
        for it, target, image in zip(items, targets, images, strict=True):
            refs = [_resized(r, size) for r in self.references(it)]
            pad = width - 2 - len(refs)
            cells += refs + [blank] * pad + [target, image]
            labels += [f"ref {i + 1}" for i in range(len(refs))] + [""] * pad + ["target", f"step {step}"]
        self.log_grid(score_grid(cells, labels, columns=width), step)
        return {"val/pixel_mse": mse}

    def generate(self, items: list[DataItem], seed_offset: int = 0) -> list[np.ndarray]:
        """Images of ``items`` from the current policy (EMA weights when on), one fixed seed per item."""
        gen, m = self.policy.gen, self.cfg.model
        size, steps = m.resolution, self.cfg.sft.validation_steps or self.cfg.sampling.num_steps
        sigmas = gen.sigmas(steps, size, size)
        out: dict[int, np.ndarray] = {}
        by_count: dict[int, list[int]] = defaultdict(list)
        for i, it in enumerate(items):
            by_count[len(it.input_paths)].append(i)
        with self.policy.evaluation_weights():
            for idx in by_count.values():
                cond = gen.condition([items[i].instruction for i in idx], [self.references(items[i]) for i in idx],
                                     size, size, m.reference_size)
                seeds = [self.cfg.run.seed + seed_offset + i for i in idx]
                x = sample_ode(gen, self.policy.transformer, cond, sigmas, seeds, size, m.guidance_scale)
                out.update(zip(idx, to_uint8_images(gen.decode(x, size, size)), strict=True))
        return [out[i] for i in range(len(items))]


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
