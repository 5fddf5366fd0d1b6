"""LoRA weights on disk and in the transformer: which modules, reading, merging, chaining.

Three places hold LoRA weights: a ``psr train`` checkpoint (``lora.safetensors``, ``ema.safetensors``
under the same peft names, and ``lora.json`` with alpha, targets, the base model and the LoRA it was
trained on top of), a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``),
and a bare ``lora.safetensors`` (alpha given by the caller). ``read_lora`` reads any of them into a
``LoraWeights``; ``merge_lora`` adds ``alpha / rank * B @ A`` to each target's weight, the chain's
first LoRA first. A GRPO run started from an SFT LoRA (``model.init_lora``) is such a chain.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file

log = logging.getLogger(__name__)

LORA_FILE = "lora.safetensors"
EMA_FILE = "ema.safetensors"
META_FILE = "lora.json"
Weights = Literal["auto", "ema", "raw"]


def resolve_targets(model: torch.nn.Module, patterns: list[str]) -> list[str]:
    """Full names of the linear layers ``patterns`` select (peft's suffix rule, or a glob with * or ?)."""

    def selected(name: str) -> bool:
        for p in patterns:
            if any(ch in p for ch in "*?["):
                if fnmatch.fnmatchcase(name, p):
                    return True
            elif name == p or name.endswith("." + p):
                return True
        return False

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and selected(n)]


@dataclass
class LoraWeights:
    """One LoRA (peft names without the adapter name) and, if it was trained on top of one, that one."""

    state: dict[str, torch.Tensor]
    alpha: float
    source: str
    init: LoraWeights | None = None
    base_model: str | None = None
    rslora: bool = False

    @property
    def rank(self) -> int:
        ranks = {v.shape[0] for k, v in self.state.items() if k.endswith("lora_A.weight")}
        if len(ranks) != 1:
            raise ValueError(f"{self.source}: expected LoRA A matrices of one rank, found ranks {sorted(ranks)}")
        return ranks.pop()

    @property
    def scaling(self) -> float:
        return self.alpha / (self.rank**0.5 if self.rslora else self.rank)

    @property
    def targets(self) -> list[str]:
        return sorted(k[: -len(".lora_A.weight")] for k in self.state if k.endswith(".lora_A.weight"))

    def chain(self) -> list[LoraWeights]:
        """The LoRAs to apply in order: the deepest ``init`` first, this one last."""
        return ([] if self.init is None else self.init.chain()) + [self]


def _strip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft file names (``base_model.model.X.lora_A.weight``) -> ``X.lora_A.weight``."""
    return {k.removeprefix("base_model.model."): v for k, v in state.items()}


def _checkpoint_file(folder: Path, weights: Weights) -> Path:
    ema = folder / EMA_FILE
    if weights == "ema" and not ema.is_file():
        raise FileNotFoundError(f"{folder} has no EMA weights ({EMA_FILE}); it was trained with optim.ema false")
    if weights == "ema" or (weights == "auto" and ema.is_file()):
        return ema
    return folder / LORA_FILE


def read_lora(path: str | Path, alpha: float | None = None, weights: Weights = "auto") -> LoraWeights:
    """Read a checkpoint folder, a PEFT adapter folder or a ``lora.safetensors`` file.

    ``weights``: a checkpoint's EMA weights ('ema'), raw weights ('raw'), or EMA when saved ('auto').
    ``alpha`` is needed only for a bare file without ``lora.json`` beside it."""
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        cfg = json.loads((path / "adapter_config.json").read_text())
        if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
            raise ValueError(f"{path}: per-module ranks or alphas (rank_pattern/alpha_pattern) are not supported")
        state = _strip(load_file(str(path / "adapter_model.safetensors")))
        return LoraWeights(state, float(cfg["lora_alpha"]), str(path), None, cfg.get("base_model_name_or_path"),
                           bool(cfg.get("use_rslora", False)))
    file = _checkpoint_file(path, weights) if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path} is neither a PEFT adapter folder (adapter_config.json) nor a psr train "
                                f"checkpoint ({LORA_FILE})")
    meta_file = file.parent / META_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if alpha is None:
        alpha = meta.get("alpha")
    if alpha is None:
        raise ValueError(f"{file} does not record the LoRA alpha ({META_FILE} is missing): pass --lora-alpha "
                         "(the training config's lora.alpha)")
    init = None
    if meta.get("init_lora"):
        if not Path(meta["init_lora"]).exists():
            raise FileNotFoundError(f"{file} was trained on top of the LoRA {meta['init_lora']}, which is gone: "
                                    "keep that checkpoint (or export this one while it exists)")
        init = read_lora(meta["init_lora"])
    if file.name == EMA_FILE:
        log.info("using the EMA weights of %s", file.parent)
    return LoraWeights(_strip(load_file(str(file))), float(alpha), str(file), init, meta.get("base_model"))


@torch.no_grad()
def lora_metadata(alpha: float, targets: list[str], base_model: str, init: LoraWeights | None) -> dict:
    """What ``lora.json`` records beside a checkpoint's weights."""
    return {"alpha": alpha, "target_modules": targets, "base_model": base_model,
            "init_lora": None if init is None else init.source}


def merge_lora(model: torch.nn.Module, lora: LoraWeights) -> None:
    """Add every LoRA of the chain into the weights it targets (``W += scaling * B @ A``)."""
    modules = dict(model.named_modules())
    for part in lora.chain():
        missing = [t for t in part.targets if not isinstance(modules.get(t), torch.nn.Linear)]
        if missing:
            raise ValueError(f"{part.source} adapts modules this model lacks: {missing[:5]}")
        for name in part.targets:
            weight = modules[name].weight
            a, b = part.state[f"{name}.lora_A.weight"].float(), part.state[f"{name}.lora_B.weight"].float()
            delta = part.scaling * (b.to(weight.device) @ a.to(weight.device))
            weight.copy_((weight.float() + delta).to(weight.dtype))


def concat_lora(lora: LoraWeights) -> LoraWeights:
    """A chain as one LoRA with the same effect: ``sum_i s_i B_i A_i = [s_1 B_1 ... s_n B_n] [A_1; ...; A_n]``.

    Rank is the sum of ranks and alpha equals it (scaling 1); a module one LoRA lacks gets zeros there."""
    parts = lora.chain()
    if len(parts) == 1 and not lora.rslora:
        return lora
    targets = sorted({t for p in parts for t in p.targets})
    state: dict[str, torch.Tensor] = {}
    for name in targets:
        a_rows, b_cols = [], []
        for p in parts:
            shape_a, shape_b = _shapes(parts, name)
            if f"{name}.lora_A.weight" in p.state:
                a_rows.append(p.state[f"{name}.lora_A.weight"].float())
                b_cols.append(p.scaling * p.state[f"{name}.lora_B.weight"].float())
            else:
                a_rows.append(torch.zeros(p.rank, shape_a[1]))
                b_cols.append(torch.zeros(shape_b[0], p.rank))
        state[f"{name}.lora_A.weight"] = torch.cat(a_rows, 0)
        state[f"{name}.lora_B.weight"] = torch.cat(b_cols, 1)
    rank = sum(p.rank for p in parts)
    return LoraWeights(state, float(rank), " + ".join(p.source for p in parts), None, parts[0].base_model)


def _shapes(parts: list[LoraWeights], name: str) -> tuple[torch.Size, torch.Size]:
    for p in parts:
        if f"{name}.lora_A.weight" in p.state:
            return p.state[f"{name}.lora_A.weight"].shape, p.state[f"{name}.lora_B.weight"].shape
    raise KeyError(name)
