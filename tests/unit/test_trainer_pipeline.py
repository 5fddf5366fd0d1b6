"""The multi-reference generator: packing, frame-wise ids, loading the tiny pipeline folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trainer.pipeline import MultiRefGenerator, frame_ids, pack_latents, unpack_latents
from trainer.tiny import make_tiny_generator


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return make_tiny_generator(tmp_path_factory.mktemp("tiny") / "generator")


@pytest.fixture(scope="module")
def gen(tiny_path):
    return MultiRefGenerator.from_pretrained(tiny_path)


def test_pack_unpack_roundtrip_and_patch_layout():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    packed = pack_latents(x)
    assert packed.shape == (2, 2 * 3, 12)
    # token (row 0, col 1) holds the 2x2 patch at rows 0-1, cols 2-3, channel-major
    assert packed[0, 1, :4].tolist() == [
        x[0, 0, 0, 2].item(),
        x[0, 0, 0, 3].item(),
        x[0, 0, 1, 2].item(),
        x[0, 0, 1, 3].item(),
    ]
    torch.testing.assert_close(unpack_latents(packed, 4, 6), x)
    with pytest.raises(ValueError, match="even"):
        pack_latents(torch.zeros(1, 3, 3, 4))


def test_frame_ids():
    ids = frame_ids(2, 4, 6)
    assert ids.shape == (6, 3)
    assert ids[:, 0].eq(2).all()
    assert ids[:, 1].tolist() == [0, 0, 0, 1, 1, 1] and ids[:, 2].tolist() == [0, 1, 2, 0, 1, 2]


def test_folder_has_the_kontext_layout(tiny_path):
    index = json.loads((tiny_path / "model_index.json").read_text())
    for part in (
        "transformer",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "scheduler",
    ):
        assert part in index and (tiny_path / part).is_dir()
    assert index["transformer"] == ["diffusers", "FluxTransformer2DModel"]


def test_references_share_the_target_sequence_with_frame_ids(gen):
    refs = [
        [
            np.full((48, 48, 3), 200, np.uint8),
            np.zeros((32, 32, 3), np.uint8),
            np.full((32, 32, 3), 90, np.uint8),
        ]
    ] * 2
    cond = gen.condition(["a dog and a cup", "a cat"], refs, 32, 32)
    n_target = (32 // gen.vae_scale_factor // 2) ** 2
    assert cond.ref_tokens.shape == (2, 3 * n_target, 4 * gen.latent_channels)
    assert cond.img_ids.shape == (4 * n_target, 3)
    frames = cond.img_ids[:, 0].view(4, n_target)
    for i in range(4):
        assert frames[i].eq(i).all()  # target frame 0, references 1..3
    torch.testing.assert_close(cond.img_ids[:n_target, 1:], cond.img_ids[n_target : 2 * n_target, 1:])
    # distinct references give distinct tokens; the same reference the same tokens
    assert not torch.allclose(cond.ref_tokens[0, :n_target], cond.ref_tokens[0, n_target : 2 * n_target])
    torch.testing.assert_close(cond.ref_tokens[0], cond.ref_tokens[1])
    noise = gen.initial_noise(2, 32, 32, torch.Generator().manual_seed(0))
    v = gen.velocity(gen.transformer, noise, torch.tensor(0.8), cond)
    assert v.shape == noise.shape and torch.isfinite(v).all()
    # the references influence the target's velocity
    other = gen.condition(
        ["a dog and a cup", "a cat"], [[np.full((32, 32, 3), 10, np.uint8)] * 3] * 2, 32, 32
    )
    assert not torch.allclose(v, gen.velocity(gen.transformer, noise, torch.tensor(0.8), other))


def test_reference_count_rules(gen):
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="at most 4"):
        gen.condition(["x"], [[img] * 5], 32, 32)
    with pytest.raises(ValueError, match="share one reference count"):
        gen.condition(["x", "y"], [[img], [img, img]], 32, 32)
    with pytest.raises(ValueError, match="multiple of 16"):
        gen.condition(["x"], [[img]], 40, 40)


def test_sigmas_and_decode(gen):
    sigmas = gen.sigmas(6, 32, 32)
    assert sigmas.shape == (7,) and sigmas[0] == 1 and sigmas[-1] == 0
    assert (sigmas[1:] < sigmas[:-1]).all()
    images = gen.decode(gen.initial_noise(3, 32, 32, torch.Generator().manual_seed(0)), 32, 32)
    assert images.shape == (3, 3, 32, 32) and images.min() >= 0 and images.max() <= 1


def test_tiny_vae_passes_images_through_at_one_eighth_resolution(gen):
    """The tiny generator's AutoencoderKL (weights set by hand, loaded with from_pretrained) keeps each 8x8
    block's colour: latent channel c (of 4) is colour c at about unit scale, and decoding gives it back."""
    from diffusers import AutoencoderKL

    assert type(gen.vae) is AutoencoderKL and gen.vae_scale_factor == 8
    rng = np.random.default_rng(0)
    blocks = rng.integers(20, 236, (2, 8, 8, 3)).astype(np.uint8)
    images = [np.kron(b, np.ones((8, 8, 1), np.uint8)) for b in blocks]  # 64 px, one colour per 8x8 block
    latents = gen.encode_images(images, 64, 64)
    colour = torch.from_numpy(blocks.astype(np.float32)).permute(0, 3, 1, 2)
    for c in range(3):
        r = np.corrcoef(latents[:, c].flatten().numpy(), colour[:, c].flatten().numpy())[0, 1]
        assert r > 0.99, (c, r)
    assert 0.2 < latents.std() < 2.0
    decoded = gen.decode(pack_latents(latents), 64, 64).permute(0, 2, 3, 1).numpy() * 255
    error = np.abs(decoded - np.stack(images).astype(np.float32))
    assert error.mean() < 12 and error.max() < 48, (error.mean(), error.max())


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model_index\.json"):
        MultiRefGenerator.from_pretrained(tmp_path)
