"""Checkpoints: LoRA weights (safetensors), optimizer, LR scheduler, EMA, RNG states and the step.

Layout: ``<output_dir>/checkpoints/step-000042/`` (after 42 steps) with ``lora.safetensors``,
``ema.safetensors`` (if EMA is on: the averaged weights under the same peft names, so anything that
reads a LoRA reads it), ``lora.json`` (alpha, targets, base model, the LoRA trained on top of),
``trainer_state.pt`` (tensors and plain Python only; loaded with ``weights_only=True``) and
``trainer_state.json`` (step, config hash) for people.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from trainer.lora import EMA_FILE, LORA_FILE, META_FILE

CHECKPOINTS = "checkpoints"


class EMA:
    """Exponential moving average of the trainable parameters, warmed up as diffusers' ``EMAModel``: update
    n (from 0) uses decay ``min(decay, (1 + n) / (10 + n))`` (0 for the first; flow_grpo's ``EMAModuleWrapper``
    ramps the same way from 0.1), so an early average follows the weights instead of staying near their start."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params = params
        self.decay = decay
        self.updates = 0  # restored on resume (trainer_state.pt)
        self.shadow = [p.detach().clone().float() for p in params]

    def current_decay(self) -> float:
        n = self.updates
        return 0.0 if n == 0 else min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach().float(), 1.0 - decay)
        self.updates += 1

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The model with the averaged weights in place of the trained ones, restored on exit."""
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
            for s, p in zip(self.shadow, self.params, strict=True):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for kept, p in zip(saved, self.params, strict=True):
                    p.copy_(kept)

    @torch.no_grad()
    def take_current(self) -> None:
        """Make the average equal the parameters' current values."""
        for s, p in zip(self.shadow, self.params, strict=True):
            s.copy_(p.detach().float())


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def lora_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the LoRA weights under peft's names (no adapter name), on the CPU."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().clone().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}


def save_checkpoint(
    output_dir: Path,
    step: int,
    transformer: torch.nn.Module,
    optimizer: Any,
    lr_scheduler: Any,
    ema: EMA | None,
    config_hash: str,
    keep: int = 3,
    lora_meta: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of ``step`` (steps completed) and prune older ones; returns its folder."""
    root = Path(output_dir) / CHECKPOINTS
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(lora_state_dict(transformer), str(tmp / LORA_FILE))
    if ema is not None:
        with ema.applied():
            save_file(lora_state_dict(transformer), str(tmp / EMA_FILE))
    if lora_meta is not None:
        (tmp / META_FILE).write_text(json.dumps(lora_meta, indent=2))
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "rng": _rng_state(),
            "config_hash": config_hash,
            "ema_updates": 0 if ema is None else ema.updates,
        },
        tmp / "trainer_state.pt",
    )
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "config_hash": config_hash}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # a crash mid-save never leaves a half checkpoint under a real name
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_latest(output_dir: Path) -> Path | None:
    """The newest complete checkpoint under ``output_dir``, or None."""
    found = sorted((Path(output_dir) / CHECKPOINTS).glob("step-*"))
    return found[-1] if found else None


def checkpoint_step(path: Path) -> int:
    """The number of steps a checkpoint was saved after (read without loading any tensor)."""
    return int(json.loads((Path(path) / "trainer_state.json").read_text())["step"])


def load_checkpoint(
    path: Path, transformer: torch.nn.Module, optimizer: Any, lr_scheduler: Any, ema: EMA | None
) -> tuple[int, str]:
    """Restore everything saved by ``save_checkpoint``; returns (step, config hash)."""
    path = Path(path)
    if not (path / "trainer_state.pt").is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint (no trainer_state.pt)")
    if ema is not None and (path / EMA_FILE).is_file():
        _set_lora(transformer, path / EMA_FILE)
        ema.take_current()
    _set_lora(transformer, path / LORA_FILE)
    state = torch.load(path / "trainer_state.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    if ema is not None:  # one EMA update per optimizer step, which the LR schedule also counts
        ema.updates = int(state.get("ema_updates", lr_scheduler.state_dict().get("last_epoch", 0)))
    _set_rng_state(state["rng"])
    return int(state["step"]), str(state["config_hash"])


def _set_lora(transformer: torch.nn.Module, file: Path) -> None:
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(transformer, load_file(str(file)))
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{file} has LoRA weights this model lacks: {unexpected[:5]}")
