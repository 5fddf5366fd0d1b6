"""Batched on-device preprocessing: batch == one at a time, and close to the PIL reference pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from reward_server.models.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    crop_boxes,
    preprocess_batch,
)
from tests.reward_contract import random_image

CPU = torch.device("cpu")
SIZES = [(64, 64), (50, 90), (64, 64), (120, 37), (20, 20)]


def pil_reference(image: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """torchvision-style Resize(short side, bicubic) + CenterCrop with PIL, in [0, 1]."""
    height, width = image.shape[:2]
    scale = resize / min(height, width)
    new_w, new_h = max(crop, round(width * scale)), max(crop, round(height * scale))
    resized = (
        np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC), dtype=np.float32) / 255.0
    )
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    return resized[top : top + crop, left : left + crop]


def test_batched_equals_one_at_a_time() -> None:
    rng = np.random.default_rng(0)
    images = [random_image(rng, h, w) for h, w in SIZES]
    spec = Preprocess(resize=37, crop=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    batched = preprocess_batch(images, spec, CPU)
    assert batched.shape == (len(images), 3, 32, 32) and batched.dtype == torch.float32
    for i, image in enumerate(images):
        torch.testing.assert_close(batched[i], preprocess_batch([image], spec, CPU)[0], atol=1e-6, rtol=0)


def test_tensor_and_numpy_inputs_agree() -> None:
    rng = np.random.default_rng(1)
    images = [random_image(rng, 40, 60), random_image(rng, 40, 60)]
    spec = Preprocess(resize=32, crop=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    torch.testing.assert_close(
        preprocess_batch([torch.from_numpy(im) for im in images], spec, CPU),
        preprocess_batch(images, spec, CPU),
    )


@pytest.mark.parametrize(("height", "width"), [(300, 400), (100, 150), (224, 224), (600, 333)])
def test_close_to_pil_bicubic_pipeline(height: int, width: int) -> None:
    image = random_image(np.random.default_rng(height), height, width)
    spec = Preprocess(resize=256, crop=224, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    ours = preprocess_batch([image], spec, CPU)[0].permute(1, 2, 0).numpy()
    ref = pil_reference(image, 256, 224)
    assert np.abs(ours - ref).max() < 0.02  # PIL rounds to uint8; the tensor path keeps floats
    assert np.abs(ours - ref).mean() < 0.003


def test_normalisation_and_dtype() -> None:
    white = np.full((8, 8, 3), 255, np.uint8)
    spec = Preprocess(resize=8, crop=8, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    out = preprocess_batch([white], spec, CPU, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    expected = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)])
    torch.testing.assert_close(out[0].float().mean(dim=(1, 2)), expected, atol=2e-2, rtol=0)
    assert preprocess_batch([], spec, CPU).shape == (0, 3, 8, 8)


def test_crop_boxes_clamps_to_the_image() -> None:
    image = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
    inside, outside = crop_boxes(image, [(2, 3, 7, 9), (-5, -5, 50, 50)])
    np.testing.assert_array_equal(inside, image[3:9, 2:7])
    assert outside.shape == image.shape


def test_large_images_are_not_stacked_into_one_full_resolution_copy(monkeypatch) -> None:
    # a batch of 16 decoded 4096 px images was stacked whole before resizing: 800 MB more per reward
    # (each reward its own copy, at once), next to the 800 MB the pixel budget counts
    import reward_server.models.preprocess as preprocess

    stacked: list[int] = []
    real_stack = preprocess._stack_to_device

    def watched(images, device):
        stacked.append(sum(image.shape[0] * image.shape[1] for image in images))
        return real_stack(images, device)

    monkeypatch.setattr(preprocess, "MAX_STACK_PIXELS", 2 * 64 * 64)
    monkeypatch.setattr(preprocess, "_stack_to_device", watched)
    rng = np.random.default_rng(0)
    images = [random_image(rng, 64, 64) for _ in range(5)] + [random_image(rng, 20, 20) for _ in range(3)]
    spec = Preprocess(resize=37, crop=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    batched = preprocess_batch(images, spec, CPU)
    assert stacked == [2 * 64 * 64, 2 * 64 * 64, 64 * 64, 3 * 20 * 20] and max(stacked) <= 2 * 64 * 64
    for i, image in enumerate(images):  # the same numbers as one at a time
        torch.testing.assert_close(batched[i], preprocess_batch([image], spec, CPU)[0], atol=1e-6, rtol=0)
