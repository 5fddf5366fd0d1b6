"""Checkpoints: LoRA weights (safetensors), optimizer, LR scheduler, EMA, RNG states and the step.

Layout: ``<output_dir>/checkpoints/step-000042/`` with ``lora.safetensors``, ``ema.safetensors``
(if EMA is on), ``trainer_state.pt`` (tensors and plain Python only; loaded with
``weights_only=True``) and ``trainer_state.json`` (step, config hash) for people.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"


class EMA:
    """Exponential moving average of the trainable parameters."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params = params
        self.decay = decay
        self.shadow = [p.detach().clone().float() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {str(i): s.cpu() for i, s in enumerate(self.shadow)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for i, s in enumerate(self.shadow):
            s.copy_(state[str(i)])


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
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(transformer).items()}


def save_checkpoint(
    output_dir: Path,
    step: int,
    transformer: torch.nn.Module,
    optimizer: Any,
    lr_scheduler: Any,
    ema: EMA | None,
    config_hash: str,
    keep: int = 3,
) -> Path:
    """Write the checkpoint of ``step`` (steps completed) and prune older ones; returns its folder."""
    root = Path(output_dir) / CHECKPOINTS
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(lora_state_dict(transformer), str(tmp / "lora.safetensors"))
    if ema is not None:
        save_file(ema.state_dict(), str(tmp / "ema.safetensors"))
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "rng": _rng_state(),
            "config_hash": config_hash,
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


def load_checkpoint(
    path: Path, transformer: torch.nn.Module, optimizer: Any, lr_scheduler: Any, ema: EMA | None
) -> tuple[int, str]:
    """Restore everything saved by ``save_checkpoint``; returns (step, config hash)."""
    from peft.utils import set_peft_model_state_dict

    path = Path(path)
    if not (path / "trainer_state.pt").is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint (no trainer_state.pt)")
    lora = load_file(str(path / "lora.safetensors"))
    result = set_peft_model_state_dict(transformer, lora)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"checkpoint {path} has LoRA weights this model lacks: {unexpected[:5]}")
    state = torch.load(path / "trainer_state.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    if ema is not None:
        ema_file = path / "ema.safetensors"
        if ema_file.is_file():
            ema.load_state_dict(load_file(str(ema_file)))
    _set_rng_state(state["rng"])
    return int(state["step"]), str(state["config_hash"])
