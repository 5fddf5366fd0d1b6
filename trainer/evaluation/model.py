"""A benchmark generator from the trainer's multi-reference pipeline (optionally with a LoRA).

Sampling is the deterministic flow ODE (Euler steps on the pipeline's sigma schedule); each item's
starting noise comes from its own seed, so an image does not depend on its batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import ConfigError
from trainer.evaluation.generate import GenerateFn

log = logging.getLogger(__name__)


def apply_lora(transformer: Any, lora: str | Path, alpha: float | None = None) -> Any:
    """Apply a LoRA: a PEFT adapter folder (``adapter_config.json``), or a ``psr train`` checkpoint
    (its folder or ``lora.safetensors``), whose rank and target modules are read from the tensors and
    whose ``alpha`` (not stored there) must be given."""
    from peft import LoraConfig, PeftModel
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(lora)
    if (path / "adapter_config.json").is_file():
        return PeftModel.from_pretrained(transformer, str(path)).merge_and_unload().eval()
    file = path / "lora.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{lora} is neither a PEFT adapter folder (adapter_config.json) "
                                "nor a psr train checkpoint (lora.safetensors)")
    if alpha is None:
        raise ValueError(f"{file} does not record the LoRA alpha: pass --lora-alpha (lora.alpha of the "
                         "training config)")
    state = {k.removeprefix("base_model.model."): v for k, v in load_file(str(file)).items()}
    ranks = {v.shape[0] for k, v in state.items() if ".lora_A." in k}
    if len(ranks) != 1:
        raise ValueError(f"{file}: expected LoRA A matrices of one rank, found ranks {sorted(ranks)}")
    targets = sorted({k.split(".lora_A.")[0] for k in state if ".lora_A." in k})
    transformer.add_adapter(LoraConfig(r=ranks.pop(), lora_alpha=alpha, target_modules=targets))
    result = set_peft_model_state_dict(transformer, state)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{file} has LoRA weights this model lacks: {unexpected[:5]}")
    return transformer.eval()


def load_generate_fn(model: str, lora: str | None = None, device: str = "auto", dtype: str = "auto",
                     steps: int = 28, size: int = 512, ref_size: int | None = None,
                     guidance: float = 2.5, lora_alpha: float | None = None) -> GenerateFn:
    """Load the pipeline once; return ``(prompts, references, seeds) -> images``."""
    import torch

    from reward_server.models.device import resolve_device, resolve_dtype
    from trainer.pipeline import MultiRefGenerator, to_uint8_images

    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    dev = resolve_device(device)
    try:
        pipe = MultiRefGenerator.from_pretrained(model, device=dev, dtype=resolve_dtype(dtype, dev))
        transformer = pipe.transformer if lora is None else apply_lora(pipe.transformer, lora, lora_alpha)
    except (OSError, ValueError) as exc:  # missing folder/files, wrong layout: the user's to fix
        raise ConfigError(f"cannot load the generator {model}{f' with LoRA {lora}' if lora else ''}: {exc}") from exc
    pipe.latent_size(size, size)  # a bad --size fails now, not after loading data
    sigmas = pipe.sigmas(steps, size, size)

    @torch.no_grad()
    def generate(prompts: Sequence[str], references: Sequence[Sequence[np.ndarray]],
                 seeds: Sequence[int]) -> list[np.ndarray]:
        cond = pipe.condition(list(prompts), [list(r) for r in references], size, size, ref_size)
        x = torch.cat([pipe.initial_noise(1, size, size, torch.Generator().manual_seed(int(s))) for s in seeds])
        x = x.to(pipe.dtype)
        for k in range(steps):
            sigma = sigmas[k].to(dev)
            v = pipe.velocity(transformer, x, sigma, cond, guidance_scale=guidance)
            x = x + (sigmas[k + 1] - sigmas[k]).to(dev, x.dtype) * v
        return to_uint8_images(pipe.decode(x, size, size))

    return generate
