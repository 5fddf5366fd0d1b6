"""The trainable policy: the generator with LoRA adapters, its optimizer and scheduler, under accelerate."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from trainer.checkpoint import EMA
from trainer.config import TrainConfig
from trainer.pipeline import MultiRefGenerator

log = logging.getLogger(__name__)


@dataclass
class Policy:
    """Everything the update touches."""

    accelerator: Any
    gen: MultiRefGenerator
    model: torch.nn.Module  # the LoRA transformer as prepared by accelerate (DDP-wrapped on several GPUs)
    optimizer: Any
    lr_scheduler: Any
    ema: EMA | None
    params: list[torch.nn.Parameter]

    @property
    def transformer(self) -> torch.nn.Module:
        """The unwrapped transformer (for sampling, saving, disabling adapters)."""
        return self.accelerator.unwrap_model(self.model)

    @contextmanager
    def reference(self):
        """The reference model: the same transformer with its LoRA adapters switched off."""
        self.transformer.disable_adapters()
        try:
            yield self.transformer
        finally:
            self.transformer.enable_adapters()


def build_policy(cfg: TrainConfig, total_optimizer_steps: int) -> Policy:
    """Load the generator, add LoRA, build AdamW + LR schedule, and prepare them with accelerate."""
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig

    use_cpu = cfg.model.device == "cpu" or not torch.cuda.is_available()
    mixed = cfg.model.mixed_precision
    if mixed == "auto":
        mixed = "no" if use_cpu else "bf16"
    accelerator = Accelerator(mixed_precision=mixed, cpu=use_cpu)
    if accelerator.device.type == "cuda":
        # The FLUX-size backward crashed in cuDNN SDPA on torch 2.11 (ENVIRONMENT.md): keep it off.
        torch.backends.cuda.enable_cudnn_sdp(False)
    dtype = torch.bfloat16 if mixed == "bf16" else torch.float32
    gen = MultiRefGenerator.from_pretrained(
        cfg.model.path, accelerator.device, dtype, cfg.model.max_sequence_length
    )

    torch.manual_seed(cfg.run.seed)  # LoRA init is part of the run's seed
    lora = cfg.lora
    gen.transformer.add_adapter(
        LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            init_lora_weights="gaussian",
        )
    )
    params = [p for p in gen.transformer.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"lora.target_modules {lora.target_modules} matched no module of the transformer")
    for p in params:
        p.data = p.data.float()  # trainable weights stay fp32 under bf16 autocast
    if cfg.model.gradient_checkpointing:
        gen.transformer.enable_gradient_checkpointing()
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, eps=o.eps)
    lr_scheduler = get_scheduler(
        o.lr_scheduler,
        optimizer,
        num_warmup_steps=o.warmup_steps,
        num_training_steps=max(total_optimizer_steps, 1),
    )
    model, optimizer = accelerator.prepare(gen.transformer, optimizer)
    ema = EMA(params, o.ema_decay) if o.ema else None
    n_train = sum(p.numel() for p in params)
    log.info("policy: %d trainable LoRA parameters on %s (%s)", n_train, accelerator.device, mixed)
    return Policy(accelerator, gen, model, optimizer, lr_scheduler, ema, params)
