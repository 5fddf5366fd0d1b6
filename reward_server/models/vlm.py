"""A vision-language model in process (Qwen2.5-VL / Qwen2-VL through ``AutoModelForImageTextToText``).

Shared by the judge (which reads digit probabilities after ``Score: ``) and by ``psr datagen``'s
re-captioner (which decodes free text). A query is a list of chat content parts
(``{"type": "text", "text": ...}`` or ``{"type": "image"}``) plus its images in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class ChatQuery:
    """One user turn: chat content parts and the images, in the order their placeholders appear."""

    content: list[dict[str, Any]]
    images: list[np.ndarray]


class VisionLanguageModel:
    """Processor (chat template, image processor) and model, loaded with ``from_pretrained``."""

    def __init__(
        self,
        model_path: str,
        device: torch.device,
        dtype: torch.dtype,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        batch_size: int = 8,
        revision: str | None = None,
    ):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        pixels = {k: v for k, v in {"min_pixels": min_pixels, "max_pixels": max_pixels}.items() if v is not None}
        self.processor = AutoProcessor.from_pretrained(model_path, revision=revision, **pixels)
        self.processor.tokenizer.padding_side = "left"  # the last position is every prompt's next token
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, revision=revision, dtype=dtype)
        self.model.to(device).eval()
        self.device = device
        self.batch_size = batch_size

    def prompt_text(self, query: ChatQuery, answer_prefix: str = "") -> str:
        """The chat-formatted prompt, with the assistant's answer started by ``answer_prefix``."""
        messages = [{"role": "user", "content": query.content}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + answer_prefix

    def inputs(self, queries: Sequence[ChatQuery], answer_prefix: str = "") -> Any:
        """Tokenised, padded model inputs of a batch of queries, on the model's device."""
        texts = [self.prompt_text(q, answer_prefix) for q in queries]
        images = [q.images for q in queries]
        inputs = self.processor(text=texts, images=images if any(images) else None, padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    @torch.inference_mode()
    def generate_text(self, queries: Sequence[ChatQuery], max_new_tokens: int = 64) -> list[str]:
        """Greedy answers (deterministic), in batches of ``batch_size``."""
        out: list[str] = []
        for start in range(0, len(queries), self.batch_size):
            chunk = queries[start : start + self.batch_size]
            inputs = self.inputs(chunk)
            generated = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            new = generated[:, inputs["input_ids"].shape[1] :]
            out.extend(self.processor.tokenizer.batch_decode(new, skip_special_tokens=True))
        return out
