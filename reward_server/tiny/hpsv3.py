"""A tiny random HPSv3: a tiny Qwen2-VL base folder plus an ``HPSv3.safetensors`` reward checkpoint.

Laid out as the real pair is on the hub, so both our reward and the HPSv3 authors' own loader
(``hpsv3==1.0.0``, which pins transformers 4.45.2) read it:

* ``ROOT/hpsv3/base``: what ``Qwen/Qwen2-VL-7B-Instruct`` holds -- ``config.json`` in its
  (flat, pre-5.0) layout, the Qwen2-VL image processor settings, the Instruct chat template, a
  byte-level tokenizer whose merges spell the words of HPSv3's template (``template_tokenizer``),
  and backbone weights (the authors' loader insists on them; the checkpoint overwrites them).
* ``ROOT/hpsv3/HPSv3.safetensors``: what ``MizzenAI/HPSv3`` holds -- the whole reward model's
  state dict in transformers 4.45 key names (``model.*`` text tower, ``visual.*``, ``lm_head``,
  ``rm_head.*``), with one extra embedding row for the ``<|Reward|>`` token.

Weights come from NumPy's PCG64 generator (stable across NumPy and torch versions), so the
stored reference scores in ``tests/fixtures/hpsv3/`` stay valid wherever the writer runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from reward_server.models.hpsv3 import HEAD_HIDDEN, INSTRUCTION, REWARD_SUFFIX, REWARD_TOKEN, legacy_key
from reward_server.tiny._tokenizers import QWEN_SPECIALS, qwen_tokenizer

HPSV3_DIR = "hpsv3"
CHECKPOINT = "HPSv3.safetensors"

# The chat template of Qwen/Qwen2-VL-7B-Instruct (its chat_template.json), verbatim: the real
# HPSv3 renders its prompt with the base model's processor, so the tiny base carries the same one.
QWEN2_VL_INSTRUCT_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2-VL-7B-Instruct's preprocessor_config.json, as on the hub.
PREPROCESSOR_CONFIG = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2VLProcessor",
}


def base_config(vocab: dict[str, int]) -> dict:
    """Qwen2-VL-7B-Instruct's config.json layout at tiny size (head_dim 16 = 2 * sum(mrope_section))."""
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "attention_dropout": 0.0,
        "bos_token_id": vocab["<|endoftext|>"],
        "eos_token_id": vocab["<|im_end|>"],
        "pad_token_id": vocab["<|endoftext|>"],
        "vision_start_token_id": vocab["<|vision_start|>"],
        "vision_end_token_id": vocab["<|vision_end|>"],
        "image_token_id": vocab["<|image_pad|>"],
        "video_token_id": vocab["<|video_pad|>"],
        "hidden_act": "silu",
        "hidden_size": 32,
        "intermediate_size": 64,
        "initializer_range": 0.02,
        "max_position_embeddings": 8192,
        "max_window_layers": 2,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "num_key_value_heads": 1,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "sliding_window": 8192,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": {
            "depth": 2, "embed_dim": 32, "mlp_ratio": 2, "num_heads": 2, "in_chans": 3, "hidden_size": 32,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
        },
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vocab_size": len(vocab),
    }


def template_tokenizer():
    """The tiny byte-level Qwen tokenizer plus BPE merges that spell each word of HPSv3's template in
    about one token, as Qwen's real vocabulary does (~600 tokens instead of ~2,900 bytes: the tests'
    forward passes get 4x cheaper). Merges are built from the template's own pieces, in order, with no
    training, so the same tokenizer comes out on every machine."""
    from transformers import Qwen2Tokenizer

    from reward_server.tiny.clip import bytes_to_unicode

    pre_tokenize = qwen_tokenizer().backend_tokenizer.pre_tokenizer.pre_tokenize_str
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for special in QWEN_SPECIALS:
        vocab[special] = len(vocab)
    merges: list[tuple[str, str]] = []
    for piece, _ in pre_tokenize(INSTRUCTION.replace("{text_prompt}", "") + REWARD_SUFFIX.replace(REWARD_TOKEN, "")):
        for i in range(1, len(piece)):
            if piece[: i + 1] not in vocab:
                merges.append((piece[:i], piece[i]))
                vocab[piece[: i + 1]] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=8192)
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIALS[1:])})
    return tokenizer


def _random_tensor(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Scaled so activations stay O(1) through the tiny tower (scores then vary with the image)."""
    if len(shape) == 1:
        centre = 1.0 if ("norm" in name or name.split(".")[-2].startswith("ln")) and name.endswith("weight") else 0.0
        return (centre + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def reward_state_dict(config_dir: Path, n_embeddings: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights of the whole reward model in 4.45 key names, in a fixed key order."""
    import torch
    from transformers import AutoConfig, Qwen2VLForConditionalGeneration

    config = AutoConfig.from_pretrained(config_dir)
    config.text_config.vocab_size = n_embeddings
    with torch.device("meta"):
        shapes = {legacy_key(k): tuple(v.shape) for k, v in Qwen2VLForConditionalGeneration(config).state_dict().items()}
    hidden = config.text_config.hidden_size
    shapes.update({
        "rm_head.0.weight": (HEAD_HIDDEN[0], hidden), "rm_head.0.bias": (HEAD_HIDDEN[0],),
        "rm_head.3.weight": (HEAD_HIDDEN[1], HEAD_HIDDEN[0]), "rm_head.3.bias": (HEAD_HIDDEN[1],),
        "rm_head.5.weight": (2, HEAD_HIDDEN[1]), "rm_head.5.bias": (2,),
    })
    rng = np.random.default_rng(seed)
    return {name: _random_tensor(rng, name, shapes[name]) for name in sorted(shapes)}


def write_hpsv3(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write the base folder and the reward checkpoint; returns (base folder, checkpoint file)."""
    import torch
    from safetensors.torch import save_file

    base = folder / "base"
    base.mkdir(parents=True, exist_ok=True)
    tokenizer = template_tokenizer()
    tokenizer.save_pretrained(base)
    vocab = tokenizer.get_vocab()
    (base / "config.json").write_text(json.dumps(base_config(vocab), indent=2))
    (base / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2))
    (base / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_VL_INSTRUCT_CHAT_TEMPLATE}, indent=2))
    state = reward_state_dict(base, len(vocab) + 1, seed)  # + the <|Reward|> row the authors add
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    backbone = {k: (v[:-1] if k in ("model.embed_tokens.weight", "lm_head.weight") else v).contiguous()
                for k, v in tensors.items() if not k.startswith("rm_head.")}
    save_file(backbone, base / "model.safetensors", metadata={"format": "pt"})
    checkpoint = folder / CHECKPOINT
    save_file(tensors, checkpoint, metadata={"format": "pt", "reward_token": REWARD_TOKEN})
    return base, checkpoint


def write(root: Path) -> dict[str, dict]:
    base, checkpoint = write_hpsv3(root / HPSV3_DIR)
    return {
        "hpsv3": {
            "type": "hpsv3",
            "model": str(checkpoint),
            "device": "cpu",
            "max_batch_size": 8,
            "max_wait_ms": 2,
            "options": {"base_model": str(base)},
        }
    }
