"""``hpsv2``: Human Preference Score v2 (Wu et al. 2023), an open_clip ViT-H-14 tuned on HPD v2.

``spec.model`` is the HPS state-dict file (``HPS_v2_compressed.pt`` or ``HPS_v2.1_compressed.pt``
from the xswu/HPSv2 release, a ``{"state_dict": ...}`` torch file, or a ``.safetensors`` file).
It is read with ``torch.load(weights_only=True)``: tensors only, never arbitrary pickles. The
architecture is built by open_clip (``architecture``, default ViT-H-14) without pretrained
weights, then the state dict is loaded strictly. ``model_config_dir`` registers extra open_clip
model configs (JSON), e.g. the tiny test variant.

Score: ``cos(image, prompt)`` as HPSv2 reports it (about 0.2-0.3), or ``logit_scale * cos``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field

from reward_server.rewards import register
from reward_server.rewards.base import PROMPT, Reward, ScoreResult
from shared.config import MODEL_REF, StrictModel
from shared.protocol import Sample


class HpsOptions(StrictModel):
    architecture: str = Field(default="ViT-H-14", description="open_clip model name the state dict belongs to")
    model_config_dir: str | None = Field(
        default=None, description="folder of extra open_clip model configs (JSON)", json_schema_extra=MODEL_REF
    )
    mode: Literal["cosine", "logit"] = Field(default="cosine", description="cosine (HPSv2's score) or logit_scale * cosine")


def read_state_dict(path: str) -> dict:
    """Tensors of a ``.pt``/``.pth`` (optionally under ``state_dict``, ``module.`` prefixes removed) or ``.safetensors`` file."""
    import torch

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"HPS state dict {file} does not exist (download HPS_v2_compressed.pt from xswu/HPSv2)")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(file)
    else:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{file} is not a plain tensor checkpoint (refusing to unpickle objects): {exc}") from exc
        state = state.get("state_dict", state)
    return {k.removeprefix("module."): v for k, v in state.items()}


@register
class HpsV2Reward(Reward):
    """HPSv2 preference score: open_clip image/text cosine after HPS fine-tuning."""

    type_name = "hpsv2"
    description = "HPSv2: cos(image, prompt) of an open_clip ViT-H-14 loaded from an HPS state dict"
    inputs = frozenset({PROMPT})
    Options = HpsOptions

    def load(self) -> None:
        import open_clip
        import torch

        from reward_server.models.device import resolve_device, resolve_dtype
        from reward_server.models.preprocess import Preprocess

        if not self.spec.model:
            raise ValueError(f"reward {self.name!r} needs `model:` (the HPS state-dict file)")
        if self.options.model_config_dir:
            open_clip.add_model_config(self.options.model_config_dir)
        self.device = resolve_device(self.spec.device)
        self.dtype = resolve_dtype(self.spec.dtype, self.device)
        model = open_clip.create_model(self.options.architecture, pretrained=None)
        model.load_state_dict(read_state_dict(self.spec.model), strict=True)
        self.model = model.to(self.device, self.dtype).eval()
        self.tokenizer = open_clip.get_tokenizer(self.options.architecture)
        cfg = getattr(model.visual, "preprocess_cfg", {})
        size = model.visual.image_size
        size = size[0] if isinstance(size, tuple | list) else size
        mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
        self.preprocess = Preprocess(resize=size, crop=size, mean=mean, std=std)
        self.logit_scale = float(torch.as_tensor(model.logit_scale).detach().float().exp())

    def score(self, samples: Sequence[Sample]) -> list[ScoreResult]:
        import torch
        import torch.nn.functional as F

        from reward_server.models.preprocess import preprocess_batch

        if not samples:
            return []
        prompts = [s.prompt for s in samples]
        unique = list(dict.fromkeys(prompts))
        row = {p: i for i, p in enumerate(unique)}
        pixels = preprocess_batch([s.image for s in samples], self.preprocess, self.device, self.dtype)
        with torch.inference_mode():
            image = F.normalize(self.model.encode_image(pixels).float(), dim=-1)
            text = F.normalize(self.model.encode_text(self.tokenizer(unique).to(self.device)).float(), dim=-1)
        cosines = (image * text[[row[p] for p in prompts]]).sum(-1).tolist()
        scale = self.logit_scale if self.options.mode == "logit" else 1.0
        return [ScoreResult(scale * c, details={"cosine": c}) for c in cosines]
