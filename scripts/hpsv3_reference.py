"""Reference HPSv3 scores from the authors' own package, stored as a test fixture.

Two steps, run by ``scripts/hpsv3_reference.sh`` (read it first):

``prepare`` (in the project's environment): writes the tiny random HPSv3 of ``psr make-tiny``
(a tiny Qwen2-VL base folder + ``HPSv3.safetensors``) and the fixed test images.

``run`` (in a throw-away virtualenv holding ``hpsv3==1.0.0`` and the transformers 4.45.2 it
pins; never in the project's environment): builds ``hpsv3.HPSv3RewardInferencer`` on those
files -- the authors' model class, processor set-up, template and ``reward()`` -- and writes
``reference.json``: mu and sigma per sample (batched and one at a time), the token ids and the
image grid the authors' code produced, and a hash of the checkpoint's tensors so the test knows
it compares on the same weights.

This file imports nothing from the project in ``run`` (the project needs a newer transformers).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

# (height, width) of the fixed images: square, wide, tall, small, and a thin strip.
IMAGE_SIZES = ((64, 64), (48, 96), (120, 70), (20, 28), (30, 150))
PROMPTS = (
    "cute chibi anime cartoon fox, smiling wagging tail with a small cartoon heart above sticker",
    "a photo of a red teapot and a green cup on a wooden table",
    "an oil painting of two cats sleeping under a window, warm light",
    "a corgi wearing sunglasses",
    "a futuristic city at night, neon signs reflected in puddles, wide angle",
)


def fixture_image(index: int, height: int, width: int):
    """A smooth, seeded (H, W, 3) uint8 image (NumPy PCG64: the same on every machine)."""
    import numpy as np

    rng = np.random.default_rng(1000 + index)
    coarse = rng.uniform(0, 255, size=(3, 3, 3))
    ys, xs = np.linspace(0, 2, height)[:, None], np.linspace(0, 2, width)[None, :]
    y0, x0 = np.clip(ys.astype(int), 0, 1), np.clip(xs.astype(int), 0, 1)
    fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
    top = coarse[y0, x0] * (1 - fx) + coarse[y0, x0 + 1] * fx
    bottom = coarse[y0 + 1, x0] * (1 - fx) + coarse[y0 + 1, x0 + 1] * fx
    image = top * (1 - fy) + bottom * fy + rng.normal(0, 6, size=(height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def tensor_digest(path: Path) -> str:
    """SHA-256 over the checkpoint's tensor names, shapes and bytes (independent of file layout)."""
    from safetensors.numpy import load_file

    digest = hashlib.sha256()
    for name, array in sorted(load_file(str(path)).items()):
        digest.update(name.encode())
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def prepare(args: argparse.Namespace) -> None:
    from PIL import Image

    from reward_server.tiny.hpsv3 import write_hpsv3

    base, checkpoint = write_hpsv3(Path(args.tiny))
    out = Path(args.images)
    out.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(IMAGE_SIZES):
        Image.fromarray(fixture_image(i, h, w)).save(out / f"image_{i}.png")
    print(f"tiny HPSv3: base {base}, checkpoint {checkpoint}; images in {out}")


def run(args: argparse.Namespace) -> None:
    import importlib.metadata as md

    import torch
    import yaml
    from hpsv3 import HPSv3RewardInferencer
    from hpsv3.dataset.data_collator_qwen import INSTRUCTION, prompt_with_special_token

    tiny = Path(args.tiny).resolve()
    images = [str(Path(args.images).resolve() / f"image_{i}.png") for i in range(len(IMAGE_SIZES))]
    # The package's own inference config, with only the base model path changed and fp32 on the
    # CPU (its bf16 setting needs CUDA autocast for the float32 head).
    package_config = Path(sys.modules["hpsv3"].__file__).parent / "config" / "HPSv3_7B.yaml"
    config = yaml.safe_load(package_config.read_text())
    config.update(model_name_or_path=str(tiny / "base"), bf16=False, torch_dtype="float32")
    config_path = tiny / "HPSv3_tiny.yaml"
    config_path.write_text(yaml.safe_dump(config))

    torch.manual_seed(0)
    inferencer = HPSv3RewardInferencer(str(config_path), str(tiny / "HPSv3.safetensors"), device="cpu")
    with torch.no_grad():
        batched = inferencer.reward(images, list(PROMPTS)).float().tolist()
        alone = [inferencer.reward([image], [prompt]).float()[0].tolist() for image, prompt in zip(images, PROMPTS, strict=False)]
        batch = inferencer.prepare_batch(images, list(PROMPTS))
    pad = inferencer.processor.tokenizer.pad_token_id
    token_ids = [[int(t) for t, m in zip(row, mask, strict=False) if m] for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=False)]
    record = {
        "source": "hpsv3==1.0.0 HPSv3RewardInferencer.reward (scripts/hpsv3_reference.py)",
        "versions": {name: md.version(name) for name in ("hpsv3", "transformers", "torch", "qwen-vl-utils")},
        "checkpoint_sha256": tensor_digest(tiny / "HPSv3.safetensors"),
        "dtype": "float32",
        "prompts": list(PROMPTS),
        "image_sizes": [list(s) for s in IMAGE_SIZES],
        "template": {"instruction": INSTRUCTION, "suffix": prompt_with_special_token},
        "pad_token_id": pad,
        "token_ids": token_ids,
        "image_grid_thw": batch["image_grid_thw"].tolist(),
        "pixel_values_sum": float(batch["pixel_values"].double().sum()),
        "rewards_batched": batched,
        "rewards_alone": alone,
    }
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}: mu {[round(r[0], 6) for r in batched]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="write the tiny HPSv3 and the fixed images (project environment)")
    p.add_argument("--tiny", required=True, help="folder for the tiny HPSv3 (base/ and HPSv3.safetensors)")
    p.add_argument("--images", required=True, help="folder for the fixture images")
    p.set_defaults(func=prepare)
    r = sub.add_parser("run", help="score with the authors' package (throw-away virtualenv)")
    r.add_argument("--tiny", required=True)
    r.add_argument("--images", required=True)
    r.add_argument("--out", required=True, help="the reference JSON to write")
    r.set_defaults(func=run)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
