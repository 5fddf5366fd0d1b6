"""``aesthetic``: the LAION aesthetic predictor v2 (improved-aesthetic-predictor).

A CLIP image embedding, L2-normalised, goes through a small MLP trained on human ratings
(roughly 1-10). Two files are needed:

* ``model``: the CLIP checkpoint the head was trained on, as a transformers ``CLIPModel`` --
  ``openai/clip-vit-large-patch14`` (ViT-L/14, 768-d projection) for the public heads.
* ``options.head``: the MLP state dict, e.g. ``sac+logos+ava1-l14-linearMSE.pth`` from
  christophschuhmann/improved-aesthetic-predictor (keys ``layers.0.weight`` ... ``layers.7.bias``),
  as ``.pth`` (read with ``torch.load(weights_only=True)``: tensors only, no pickled code) or
  ``.safetensors``. A relative path is looked up as given, then inside the ``model`` folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from reward_server.rewards import register
from reward_server.rewards.base import Reward, ScoreResult
from shared.config import MODEL_REF, StrictModel
from shared.protocol import Sample


class AestheticOptions(StrictModel):
    head: str = Field(
        description="path of the MLP state dict (.pth or .safetensors), e.g. sac+logos+ava1-l14-linearMSE.pth; "
        "a relative path starts at the config file's folder, else inside a local `model` folder",
        json_schema_extra=MODEL_REF,
    )


@register
class AestheticReward(Reward):
    """LAION aesthetic score of the image (about 1-10 with the public heads)."""

    type_name = "aesthetic"
    description = "LAION aesthetic predictor v2: MLP on the L2-normalised CLIP image embedding"
    Options = AestheticOptions

    def set_model_ref(self, key: str, value: str) -> None:
        """The path rule for ``options.head``, keeping the head-inside-the-model-folder layout."""
        written = Path(self.options.head).expanduser()
        if key == "options.head" and not Path(value).is_file() and not written.is_absolute() and self.spec.model:
            beside = Path(self.spec.model).expanduser() / written  # ``model`` is resolved before the options
            if beside.is_file():
                value = str(beside)
        super().set_model_ref(key, value)

    def head_path(self) -> Path:
        """Where the head file is: as given, else relative to a local ``model`` folder."""
        path = Path(self.options.head).expanduser()
        if not path.is_file() and not path.is_absolute() and self.spec.model:
            beside = Path(self.spec.model).expanduser() / path
            if beside.is_file():
                return beside
        if not path.is_file():
            raise FileNotFoundError(
                f"aesthetic head {self.options.head!r} not found (options.head of {self.name!r})"
            )
        return path

    def load(self) -> None:
        from reward_server.models.aesthetic_head import load_head
        from reward_server.models.device import resolve_device, resolve_dtype
        from reward_server.models.embedders import ImageEmbedder

        if not self.spec.model:
            raise ValueError(f"reward {self.name!r} needs `model:` (the CLIPModel the head was trained on)")
        device = resolve_device(self.spec.device)
        head = load_head(self.head_path())
        self.embedder = ImageEmbedder(self.spec.model, "clip", device, resolve_dtype(self.spec.dtype, device))
        if head.input_size != self.embedder.dim:
            raise ValueError(
                f"the aesthetic head takes {head.input_size}-d embeddings but {self.spec.model} gives "
                f"{self.embedder.dim}-d ones: use the CLIP model the head was trained on"
            )
        self.head = head.to(device)

    def score(self, samples: Sequence[Sample]) -> list[ScoreResult]:
        if not samples:
            return []
        import torch

        embeddings = self.embedder.embed([s.image for s in samples])  # float32, unit length
        with torch.inference_mode():
            scores = self.head(embeddings).squeeze(-1)
        return [ScoreResult(float(v)) for v in scores.tolist()]
