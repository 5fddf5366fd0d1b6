"""Preprocessing throughput: a per-image PIL loop vs the batched tensor path rewards use.

    PYTHONPATH=. python bench/preprocess.py [--device cuda] [--n 128] [--size 512]

Prints images/s for each path and their ratios, measured in this run. On a GPU the tensor
paths also show the gain of one host-to-device copy per size group over one copy per image.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from reward_server.models.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    preprocess_batch,
    to_device_uint8,
)


def pil_loop(images: list[np.ndarray], spec: Preprocess, device: torch.device) -> torch.Tensor:
    """What an image processor does: PIL resize + crop + normalise per image, then one transfer."""
    mean, std = np.array(spec.mean, np.float32), np.array(spec.std, np.float32)
    out = []
    for image in images:
        height, width = image.shape[:2]
        scale = spec.resize / min(height, width)
        new_w, new_h = max(spec.crop, round(width * scale)), max(spec.crop, round(height * scale))
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC), np.float32) / 255.0
        top, left = (new_h - spec.crop) // 2, (new_w - spec.crop) // 2
        out.append(
            ((resized[top : top + spec.crop, left : left + spec.crop] - mean) / std).transpose(2, 0, 1)
        )
    return torch.from_numpy(np.stack(out)).to(device)


def per_image_copies(images: list[np.ndarray], spec: Preprocess, device: torch.device) -> torch.Tensor:
    """The earlier tensor path: one host-to-device copy per image, float32 resize."""
    batch = torch.stack(to_device_uint8(images, device)).float().div_(255.0)
    height, width = batch.shape[-2:]
    scale = spec.resize / min(height, width)
    size = (max(spec.crop, round(height * scale)), max(spec.crop, round(width * scale)))
    batch = F.interpolate(batch, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
    top, left = (size[0] - spec.crop) // 2, (size[1] - spec.crop) // 2
    batch = batch[..., top : top + spec.crop, left : left + spec.crop]
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    return (batch - mean) / std


def rate(fn, images, spec, device, repeats: int) -> float:
    fn(images, spec, device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn(images, spec, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return repeats * len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=64, help="images per batch")
    parser.add_argument("--size", type=int, default=512, help="side of the input images")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.n)]
    spec = Preprocess(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    rates = {
        "pil_loop": rate(pil_loop, images, spec, device, args.repeats),
        "tensor_float_per_image (old)": rate(per_image_copies, images, spec, device, args.repeats),
        "tensor_batched (preprocess_batch)": rate(preprocess_batch, images, spec, device, args.repeats),
    }
    print(f"device={device} threads={torch.get_num_threads()} n={args.n} {args.size}px -> 224, DINO protocol")
    for name, value in rates.items():
        print(f"  {name:36s} {value:10.1f} images/s")
    base = rates["pil_loop"]
    print(
        f"  ratio tensor_batched / pil_loop            = {rates['tensor_batched (preprocess_batch)'] / base:.2f}"
    )
    print(
        "  ratio tensor_batched / tensor_float_per_image = "
        f"{rates['tensor_batched (preprocess_batch)'] / rates['tensor_float_per_image (old)']:.2f}"
    )


if __name__ == "__main__":
    main()
