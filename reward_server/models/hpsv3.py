"""HPSv3 (Ma et al., ICCV 2025): Qwen2-VL with a reward head read at a special ``<|Reward|>`` token.

Reproduces the inference of the authors' package ``hpsv3==1.0.0`` (PyPI; MizzenAI/HPSv3 on
GitHub), file by file:

* prompt: ``INSTRUCTION.format(text_prompt=prompt) + prompt_with_special_token``
  (``hpsv3/dataset/data_collator_qwen.py``), one user turn holding the image then that text,
  rendered with the base model's chat template (Qwen2-VL-7B-Instruct's, system turn included)
  with ``add_generation_prompt=True`` (``hpsv3/inference.py`` ``prepare_batch``);
* image: resized with PIL bicubic to ``smart_resize(h, w, 28, min_pixels=max_pixels=256*28*28)``
  (``hpsv3/dataset/utils.py`` ``fetch_image``), then the Qwen2-VL image processor;
* model: the base model's processor with ``<|Reward|>`` added as a special token, Qwen2-VL with
  its embeddings resized to the tokenizer, then the ``HPSv3.safetensors`` state dict loaded
  strictly (``hpsv3/train.py`` ``create_model_and_processor``, ``HPSv3_7B.yaml``);
* forward (``hpsv3/model/qwen2vl_trainer.py`` ``Qwen2VLRewardModelBT``): the text tower is
  called without ``position_ids``, which in transformers 4.45 means plain positions 0..L-1 on all
  three M-RoPE axes (not the 3-D image positions that generation uses) -- the checkpoint was
  trained that way, so we pass those positions explicitly; right padding; the head is the
  ``ranknet`` MLP ``hidden -> 1024 -> ReLU -> 16 -> ReLU -> 2`` in float32 on the last hidden
  state at the ``<|Reward|>`` token; output ``(mu, sigma)``, the score is ``mu``.

The weights load through ``from_pretrained(None, config=..., state_dict=...)`` with the
checkpoint's 4.45 key names mapped to today's (``model.*`` -> ``language_model.*``); every key
must be used, none may be missing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

# hpsv3/dataset/data_collator_qwen.py (hpsv3 1.0.0), verbatim, including the authors' wording.
INSTRUCTION = """
You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a overall score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the worst and 10 being the best. 

**Visual Quality:**  
Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:
- **Reasonableness:** The image should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.
- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to interpret, with no blurring or indistinct areas.
- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).
- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.
- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. 

**Text Alignment:**  
Assess how well the image matches the textual prompt across the following sub-dimensions:
- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.
- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the image adheres to this style.
- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in the image logically fit the scenario described in the prompt. The environment should support and enhance the subject without contradictions.
- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, clothing, accessories, expressions, actions) are faithfully represented in the image. Minor deviations may be acceptable, but critical attributes should be preserved.
- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in the image. The generated content should not introduce elements that conflict with or distort the original description.
Textual prompt - {text_prompt}


"""  # noqa: W291
REWARD_SUFFIX = """
Please provide the overall ratings of this image: <|Reward|>

END
"""
REWARD_TOKEN = "<|Reward|>"
IMAGE_FACTOR = 28  # patch 14 x spatial merge 2
PIXELS = 256 * 28 * 28  # min_pixels = max_pixels in inference.py: every image becomes ~448 x 448
MAX_RATIO = 200
HEAD_HIDDEN = (1024, 16)  # the ranknet head without rm_head_kwargs
DEFAULT_BASE = "Qwen/Qwen2-VL-7B-Instruct"
DEFAULT_CHECKPOINT_FILE = "HPSv3.safetensors"


def hpsv3_text(prompt: str) -> str:
    """The text part of the user turn for ``prompt``."""
    return INSTRUCTION.format(text_prompt=prompt) + REWARD_SUFFIX


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR, pixels: int = PIXELS) -> tuple[int, int]:
    """qwen-vl-utils' ``smart_resize`` with min_pixels = max_pixels = ``pixels``: sides are multiples
    of ``factor`` and the area is as close to ``pixels`` as the aspect ratio allows."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"HPSv3 takes aspect ratios up to {MAX_RATIO}:1, got {height}x{width}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > pixels:
        beta = math.sqrt(height * width / pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < pixels:
        beta = math.sqrt(pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def legacy_key(key: str) -> str:
    """transformers 5 name of a ``Qwen2VLForConditionalGeneration`` weight -> the 4.45 name HPSv3 ships."""
    if key.startswith("model.language_model."):
        return "model." + key.removeprefix("model.language_model.")
    if key.startswith("model.visual."):
        return key.removeprefix("model.")
    return key


def backbone_key(key: str) -> str | None:
    """A checkpoint (4.45) name -> the ``Qwen2VLModel`` name today; ``None`` for lm_head and the head."""
    if key.startswith("visual."):
        return key
    if key.startswith("model."):
        return "language_model." + key.removeprefix("model.")
    return None


def build_head(hidden: int) -> torch.nn.Sequential:
    """The ranknet head (dropout is inactive at inference and keeps the authors' module indices)."""
    nn = torch.nn
    return nn.Sequential(
        nn.Linear(hidden, HEAD_HIDDEN[0]), nn.ReLU(), nn.Dropout(0.05),
        nn.Linear(HEAD_HIDDEN[0], HEAD_HIDDEN[1]), nn.ReLU(), nn.Linear(HEAD_HIDDEN[1], 2),
    )


def resize_for_hpsv3(image: np.ndarray, pixels: int = PIXELS) -> np.ndarray:
    """PIL bicubic resize of an (H, W, 3) uint8 image to HPSv3's size, as ``fetch_image`` does."""
    from PIL import Image

    height, width = image.shape[:2]
    new_h, new_w = smart_resize(height, width, pixels=pixels)
    return np.array(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC))  # writable: torch wraps it


class HPSv3Model:
    """The HPSv3 reward model on one device: ``score(images, prompts) -> (mu, sigma)`` arrays."""

    def __init__(self, checkpoint: str | Path, base_model: str, device: torch.device, dtype: torch.dtype,
                 pixels: int = PIXELS):
        from transformers import AutoProcessor, Qwen2VLModel

        self.device, self.dtype, self.pixels = device, dtype, pixels
        self.processor = AutoProcessor.from_pretrained(base_model)
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "right"
        tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
        self.reward_id = tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
        self.pad_id = tokenizer.pad_token_id

        state = self.read_state(checkpoint)
        embed = state.get("model.embed_tokens.weight")
        if embed is None:
            raise ValueError(f"{checkpoint} is not an HPSv3 checkpoint: it has no model.embed_tokens.weight")
        if self.reward_id >= embed.shape[0]:
            raise ValueError(f"{checkpoint} has {embed.shape[0]} embeddings, too few for the {REWARD_TOKEN} "
                             f"token (id {self.reward_id}) of {base_model}'s tokenizer: checkpoint and base do not match")
        config = self.model_config(base_model)
        config.text_config.vocab_size = embed.shape[0]
        backbone = {}
        for key, tensor in state.items():
            mapped = backbone_key(key)
            if mapped is not None:
                backbone[mapped] = tensor
        head_state = {k.removeprefix("rm_head."): v for k, v in state.items() if k.startswith("rm_head.")}
        model, info = Qwen2VLModel.from_pretrained(
            None, config=config, state_dict=backbone, dtype=dtype, output_loading_info=True
        )
        problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if problems:
            raise ValueError(f"{checkpoint} does not fit {base_model}: {problems}")
        self.model = model.to(device).eval()
        self.head = build_head(config.text_config.hidden_size)
        self.head.load_state_dict(head_state, strict=True)
        self.head.to(device, torch.float32).eval()

    def read_state(self, checkpoint: str | Path) -> dict[str, torch.Tensor]:
        """The checkpoint's tensors (``bench/gpu_suite.py`` makes random ones of the real size instead)."""
        from safetensors.torch import load_file

        return load_file(str(checkpoint))

    def model_config(self, base_model: str):
        """The backbone's config, from the base model (``from_pretrained``)."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(base_model)

    def prompt_texts(self, prompts: Sequence[str]) -> list[str]:
        """The chat-rendered prompt of each sample (image placeholder, instruction, reward token)."""
        return [
            self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": hpsv3_text(p)}]}],
                tokenize=False, add_generation_prompt=True,
            )
            for p in prompts
        ]

    def inputs(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokens and pixels of a batch, as the authors' ``prepare_batch`` builds them."""
        resized = [resize_for_hpsv3(image, self.pixels) for image in images]
        batch = self.processor(
            text=self.prompt_texts(prompts), images=resized, padding=True, return_tensors="pt", do_resize=False
        )
        return {k: v.to(self.device) for k, v in batch.items()}

    @torch.inference_mode()
    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) per sample."""
        batch = self.inputs(images, prompts)
        ids = batch["input_ids"]
        rows, cols = (ids == self.reward_id).nonzero(as_tuple=True)
        if rows.tolist() != list(range(len(ids))):
            raise ValueError(f"each prompt must hold exactly one {REWARD_TOKEN} token")
        positions = torch.arange(ids.shape[1], device=self.device).expand(ids.shape[0], -1)
        hidden = self.model(
            input_ids=ids,
            attention_mask=batch["attention_mask"],
            position_ids=positions,  # plain 0..L-1 on every M-RoPE axis, as the checkpoint was trained
            pixel_values=batch["pixel_values"].to(self.dtype),
            image_grid_thw=batch["image_grid_thw"],
            use_cache=False,
        ).last_hidden_state
        out = self.head(hidden[rows, cols].float()).double().cpu().numpy()
        return out[:, 0], out[:, 1]
