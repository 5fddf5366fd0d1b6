"""A benchmark generator from the trainer's multi-reference pipeline (optionally with a LoRA).

Sampling is the deterministic flow ODE (Euler steps on the pipeline's sigma schedule); each item's
starting noise comes from its own seed, so an image does not depend on its batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from shared.config import ConfigError
from trainer.evaluation.generate import GenerateFn

log = logging.getLogger(__name__)


def load_generate_fn(model: str, lora: str | None = None, device: str = "auto", dtype: str = "auto",
                     steps: int = 28, size: int = 512, ref_size: int | None = None,
                     guidance: float = 2.5, lora_alpha: float | None = None) -> GenerateFn:
    """Load the pipeline once (with ``lora`` merged in); return ``(prompts, references, seeds) -> images``."""
    import torch

    from reward_server.models.device import resolve_device, resolve_dtype
    from trainer.lora import merge_lora, read_lora
    from trainer.pipeline import MultiRefGenerator, to_uint8_images
    from trainer.sampling import sample_ode

    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    dev = resolve_device(device)
    try:
        pipe = MultiRefGenerator.from_pretrained(model, device=dev, dtype=resolve_dtype(dtype, dev))
        if lora is not None:  # a PEFT folder or a psr train checkpoint (EMA weights when it has them)
            merge_lora(pipe.transformer, read_lora(lora, lora_alpha))
    except (OSError, ValueError) as exc:  # missing folder/files, wrong layout: the user's to fix
        raise ConfigError(f"cannot load the generator {model}{f' with LoRA {lora}' if lora else ''}: {exc}") from exc
    pipe.latent_size(size, size)  # a bad --size fails now, not after loading data
    sigmas = pipe.sigmas(steps, size, size)

    @torch.no_grad()
    def generate(prompts: Sequence[str], references: Sequence[Sequence[np.ndarray]],
                 seeds: Sequence[int]) -> list[np.ndarray]:
        cond = pipe.condition(list(prompts), [list(r) for r in references], size, size, ref_size)
        x = sample_ode(pipe, pipe.transformer, cond, sigmas, seeds, size, guidance)
        return to_uint8_images(pipe.decode(x, size, size))

    return generate
