"""``psr export``: a training checkpoint as a model others load.

* ``merged``: a full FLUX.1 Kontext pipeline folder (diffusers layout) with the LoRA chain merged into
  the transformer: ``psr bench generate --model DIR``, ``diffusers.FluxKontextPipeline.from_pretrained``.
* ``peft``: one LoRA folder with the chain folded in (ranks concatenated, scaling in B, alpha = rank):
  ``adapter_config.json`` + ``adapter_model.safetensors`` for ``peft.PeftModel.from_pretrained`` and
  ``psr bench generate --lora DIR``, and ``pytorch_lora_weights.safetensors`` for diffusers'
  ``pipe.load_lora_weights(DIR)``.

EMA weights are used when the checkpoint has them (``--weights auto``), as flow_grpo evaluates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from trainer.lora import LoraWeights

Format = Literal["merged", "peft"]
DTYPES = ("float32", "bfloat16", "float16")


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    fmt: Format = "merged",
    weights: str = "auto",
    model: str | None = None,
    dtype: str = "bfloat16",
) -> Path:
    """Write ``out`` from ``checkpoint`` (a ``psr train`` checkpoint or PEFT folder); returns ``out``."""
    import torch

    from trainer.lora import concat_lora, merge_lora, read_lora

    lora = read_lora(checkpoint, weights=weights)
    base = model or lora.chain()[0].base_model
    if fmt == "peft":
        return save_peft(concat_lora(lora), Path(out), base)
    if not base:
        raise ValueError(f"{checkpoint} does not record its base model: pass --model")
    from trainer.pipeline import MultiRefGenerator

    gen = MultiRefGenerator.from_pretrained(base, "cpu", getattr(torch, dtype))
    merge_lora(gen.transformer, lora)
    return gen.save_pretrained(out)


def save_peft(lora: LoraWeights, out: Path, base_model: str | None) -> Path:
    """A PEFT adapter folder (and diffusers' LoRA file) holding ``lora`` at scaling 1."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    rank = lora.rank
    folded = {k: v * (lora.scaling if k.endswith("lora_B.weight") else 1.0) for k, v in lora.state.items()}
    folded = {k: v.contiguous().float() for k, v in folded.items()}
    LoraConfig(r=rank, lora_alpha=rank, target_modules=lora.targets, base_model_name_or_path=base_model).save_pretrained(
        str(out)
    )
    save_file({f"base_model.model.{k}": v for k, v in folded.items()}, str(out / "adapter_model.safetensors"))
    save_file({f"transformer.{k}": v for k, v in folded.items()}, str(out / "pytorch_lora_weights.safetensors"))
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand."""
    p = subparsers.add_parser(
        "export",
        help="write a training checkpoint as a merged diffusers pipeline folder or a PEFT LoRA folder",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="a psr train checkpoint folder (checkpoints/step-N)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=["merged", "peft"], default="merged", help="default: %(default)s")
    p.add_argument("--weights", choices=["auto", "ema", "raw"], default="auto",
                   help="EMA or raw LoRA weights; auto = EMA when the checkpoint has them (default: %(default)s)")
    p.add_argument("--model", default=None, help="base pipeline (default: the one recorded in the checkpoint)")
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                   help="weights of a merged export (default: %(default)s)")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    try:
        out = export_checkpoint(args.checkpoint, args.out, args.format, args.weights, args.model, args.dtype)
    except (OSError, ValueError) as exc:
        print(f"psr export: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"format": args.format, "out": str(out)}))
    return 0
