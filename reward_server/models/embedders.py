"""Image embedders shared by the similarity and subject-consistency rewards.

Three backbones, all loaded with ``from_pretrained``:

* ``dino``: DINO v1 (e.g. facebook/dino-vits16) through ``ViTModel``; CLS token; resize 256
  bicubic, centre crop 224, ImageNet mean/std -- the PSR paper's protocol.
* ``dinov2``: ``Dinov2Model``; CLS token; same preprocessing.
* ``clip``: the image tower of a ``CLIPModel``; projected image features; CLIP mean/std.

Crop size follows the checkpoint's ``image_size`` (224 for the real ones, tiny for tests);
the resize is ``crop * 256 / 224`` as in the DINO protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from reward_server.models.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    preprocess_batch,
)

EmbedderKind = Literal["dino", "dinov2", "clip"]


class ImageEmbedder:
    """Maps images to L2-normalised embeddings, in batches."""

    def __init__(self, model_path: str, kind: EmbedderKind, device: torch.device, dtype: torch.dtype):
        self.kind = kind
        self.device = device
        self.dtype = dtype
        if kind == "dino":
            from transformers import ViTModel

            self.model = ViTModel.from_pretrained(model_path, add_pooling_layer=False, dtype=dtype)
            size, mean, std = self.model.config.image_size, IMAGENET_MEAN, IMAGENET_STD
        elif kind == "dinov2":
            from transformers import Dinov2Model

            self.model = Dinov2Model.from_pretrained(model_path, dtype=dtype)
            size, mean, std = min(224, self.model.config.image_size), IMAGENET_MEAN, IMAGENET_STD
        elif kind == "clip":
            from transformers import CLIPModel

            self.model = CLIPModel.from_pretrained(model_path, dtype=dtype)
            size, mean, std = self.model.config.vision_config.image_size, CLIP_MEAN, CLIP_STD
        else:
            raise ValueError(f"unknown embedder kind {kind!r}; use dino, dinov2 or clip")
        self.model.to(device).eval()
        resize = size if kind == "clip" else round(size * 256 / 224)
        self.preprocess = Preprocess(resize=resize, crop=size, mean=mean, std=std)

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed an already preprocessed (N, 3, S, S) batch; returns float32 unit vectors."""
        if pixels.shape[0] == 0:
            return torch.empty(0, self.dim, device=self.device)
        if self.kind == "clip":
            features = self.model.get_image_features(pixel_values=pixels)
            features = getattr(features, "pooler_output", features)
        else:
            features = self.model(pixel_values=pixels).last_hidden_state[:, 0]
        return F.normalize(features.float(), dim=-1)

    def embed(self, images: Sequence[np.ndarray | torch.Tensor]) -> torch.Tensor:
        """Embed (H, W, 3) uint8 images of any sizes."""
        return self.embed_pixels(preprocess_batch(images, self.preprocess, self.device, self.dtype))

    @property
    def dim(self) -> int:
        config = self.model.config
        return config.projection_dim if self.kind == "clip" else config.hidden_size
