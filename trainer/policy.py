"""The trainable policy: the generator with LoRA adapters, its optimizer and scheduler, under accelerate."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint import EMA
from trainer.config import TrainConfig
from trainer.lora import LoraWeights, lora_metadata, merge_lora, read_lora, resolve_targets
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
    lora_meta: dict[str, Any] = field(default_factory=dict)  # written beside each checkpoint's weights

    @property
    def transformer(self) -> torch.nn.Module:
        """The unwrapped transformer (for sampling, saving, disabling adapters)."""
        return self.accelerator.unwrap_model(self.model)

    @contextmanager
    def reference(self) -> Iterator[torch.nn.Module]:
        """The reference model: the same transformer with its LoRA adapters switched off."""
        self.transformer.disable_adapters()
        try:
            yield self.transformer
        finally:
            self.transformer.enable_adapters()

    def optimizer_step(self, max_grad_norm: float) -> float:
        """Clip gradients, step the optimizer and LR schedule, clear gradients, update the EMA; returns the
        gradient norm before clipping."""
        grad_norm = float(self.accelerator.clip_grad_norm_(self.params, max_grad_norm))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        return grad_norm

    def evaluation_weights(self) -> AbstractContextManager[None]:
        """Where evaluation happens: with the EMA weights in place when EMA is on (as flow_grpo evaluates)."""
        return self.ema.applied() if self.ema is not None else nullcontext()


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

    init = _merge_init_lora(gen, cfg.model.init_lora)
    torch.manual_seed(cfg.run.seed)  # LoRA init is part of the run's seed
    lora = cfg.lora
    targets = resolve_targets(gen.transformer, lora.target_modules)
    if not targets:
        raise ValueError(f"lora.target_modules {lora.target_modules} matched no linear layer of the transformer")
    gen.transformer.add_adapter(
        LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=targets,
            init_lora_weights="gaussian",
        )
    )
    params = [p for p in gen.transformer.parameters() if p.requires_grad]
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
    log.info("policy: %d trainable LoRA parameters on %s (mixed precision: %s)", n_train, accelerator.device, mixed)
    base = str(Path(cfg.model.path).resolve()) if Path(cfg.model.path).exists() else cfg.model.path
    meta = lora_metadata(lora.alpha, targets, base, init)
    return Policy(accelerator, gen, model, optimizer, lr_scheduler, ema, params, meta)


def _merge_init_lora(gen: MultiRefGenerator, init_lora: str | None) -> LoraWeights | None:
    """Merge ``model.init_lora`` (e.g. the SFT result) into the base weights; the new LoRA trains on top.

    Merged rather than trained further: the GRPO reference model (adapters off) is then the SFT
    model, and the new LoRA may have another rank (the paper: SFT 512, GRPO 64)."""
    if not init_lora:
        return None
    if not Path(init_lora).exists():
        raise FileNotFoundError(f"model.init_lora {init_lora} does not exist (a psr train checkpoint folder or a "
                                "PEFT adapter folder)")
    init = read_lora(Path(init_lora).resolve())
    merge_lora(gen.transformer, init)
    log.info("merged %s (rank %d) into the base weights", init.source, init.rank)
    return init
