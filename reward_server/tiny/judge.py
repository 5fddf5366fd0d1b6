"""A tiny random Qwen2.5-VL (processor + chat template) for the in-process judge."""

from __future__ import annotations

from pathlib import Path

from reward_server.tiny._tokenizers import qwen_tokenizer

# Qwen's chat layout for image + text content, as Qwen2.5-VL-Instruct ships it (minus the system turn)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _text_config(vocab: dict[str, int]) -> dict:
    """The tiny text tower both Qwen-VL generations share (head_dim 16 = 2 * sum(mrope_section))."""
    return dict(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=8192,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3]),
        bos_token_id=vocab["<|endoftext|>"], eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<|endoftext|>"],
    )


def write_qwen25_vl(path: Path) -> Path:
    """Hidden 32, 2 text + 2 vision layers; text head_dim 16 = 2 * sum(mrope_section)."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tokenizer = qwen_tokenizer()
    vocab = tokenizer.get_vocab()
    config = Qwen2_5_VLConfig(
        text_config=_text_config(vocab),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, window_size=56, out_hidden_size=32, fullatt_block_indexes=[1],
        ),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"],
    )
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(path)
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE
    )
    processor.save_pretrained(path)
    return path


def write_qwen2_vl(path: Path) -> Path:
    """A tiny Qwen2-VL (the previous generation, also served by the in-process judge)."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tokenizer = qwen_tokenizer()
    vocab = tokenizer.get_vocab()
    config = Qwen2VLConfig(
        text_config=_text_config(vocab),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, mlp_ratio=2, num_heads=2, patch_size=14),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"],
    )
    Qwen2VLForConditionalGeneration(config).save_pretrained(path)
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    Qwen2VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE
    ).save_pretrained(path)
    return path


def write(root: Path) -> dict[str, dict]:
    path = write_qwen25_vl(root / "qwen2_5_vl")
    return {
        "judge": {
            "type": "vlm_judge",
            "model": str(path),
            "max_batch_size": 8,
            "max_wait_ms": 5,
            # a random judge puts almost no probability on digits; real judges keep the 0.5 default
            "options": {"min_digit_mass": 0.0},
        }
    }
