"""``hpsv3``: Human Preference Score v3 (Ma et al., ICCV 2025), the PSR paper's preference reward.

``spec.model`` is the HPSv3 checkpoint: a ``.safetensors`` file, a folder holding
``HPSv3.safetensors``, or a hub repository (``MizzenAI/HPSv3``, the file is fetched with
``hf_hub_download``). ``options.base_model`` is the Qwen2-VL it was trained from
(``Qwen/Qwen2-VL-7B-Instruct``): its config, tokenizer, image processor and chat template are part
of the model's definition. Prompt template, image size (256·28·28 pixels), positions and head
follow the authors' ``hpsv3==1.0.0`` exactly (see ``reward_server/models/hpsv3.py``); the score
is the head's mu (about -5..15 on real images), sigma is in the details.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from reward_server.models.hpsv3 import DEFAULT_BASE, DEFAULT_CHECKPOINT_FILE, PIXELS, REWARD_TOKEN
from reward_server.rewards import register
from reward_server.rewards.base import PROMPT, Reward, ScoreResult
from shared.config import MODEL_REF, StrictModel
from shared.protocol import Sample

DEFAULT_MODEL = "MizzenAI/HPSv3"
# Text the tokenizer reads as a special token that breaks the prompt's layout: a second reward token
# (no single place to read the score) or an image/video placeholder (more placeholders than images).
BREAKING_TOKENS = (REWARD_TOKEN, "<|image_pad|>", "<|video_pad|>")


class HpsV3Options(StrictModel):
    base_model: str = Field(
        default=DEFAULT_BASE, description="the Qwen2-VL checkpoint HPSv3 was trained from (config, processor)",
        json_schema_extra=MODEL_REF,
    )
    checkpoint_file: str = Field(default=DEFAULT_CHECKPOINT_FILE, description="file name inside a folder or hub repo")
    pixels: int = Field(default=PIXELS, ge=28 * 28, description="image area after resizing (HPSv3: 256*28*28)")
    batch_size: int = Field(default=8, ge=1, description="images per forward pass")


def checkpoint_file(model: str, file_name: str) -> str:
    """The local path of the HPSv3 weights: the file itself, a file in a folder, or one fetched from the hub."""
    path = Path(model).expanduser()
    if path.is_file():
        return str(path)
    if path.is_dir():
        if not (path / file_name).is_file():
            raise FileNotFoundError(f"{path} holds no {file_name} (set options.checkpoint_file)")
        return str(path / file_name)
    from huggingface_hub import hf_hub_download

    return hf_hub_download(model, file_name, repo_type="model")


@register
class HpsV3Reward(Reward):
    """HPSv3 preference score: mu of the reward head of a Qwen2-VL judge."""

    type_name = "hpsv3"
    description = "HPSv3: human preference (mu of Qwen2-VL's reward head at the <|Reward|> token)"
    inputs = frozenset({PROMPT})
    Options = HpsV3Options

    def load(self) -> None:
        from reward_server.models.device import resolve_device, resolve_dtype
        from reward_server.models.hpsv3 import HPSv3Model

        model = self.spec.model or DEFAULT_MODEL
        device = resolve_device(self.spec.device)
        self.model = HPSv3Model(
            checkpoint_file(model, self.options.checkpoint_file), self.options.base_model,
            device, resolve_dtype(self.spec.dtype, device), self.options.pixels,
        )

    def score(self, samples: Sequence[Sample]) -> list[ScoreResult]:
        results: list[ScoreResult | None] = [self._refusal(s.prompt) for s in samples]
        valid = [i for i, r in enumerate(results) if r is None]  # a bad prompt fails alone, not its batch
        step = self.options.batch_size
        for start in range(0, len(valid), step):
            chunk = [samples[i] for i in valid[start : start + step]]
            mu, sigma = self.model.score([s.image for s in chunk], [s.prompt for s in chunk])
            for i, m, s in zip(valid[start : start + step], mu, sigma, strict=True):
                results[i] = ScoreResult(float(m), details={"sigma": round(float(s), 6)})
        return results

    @staticmethod
    def _refusal(prompt: str) -> ScoreResult | None:
        found = [t for t in BREAKING_TOKENS if t in prompt]
        if found:
            return ScoreResult.failed(f"the prompt contains {found[0]}, a special token of HPSv3's template; remove it")
        return None
