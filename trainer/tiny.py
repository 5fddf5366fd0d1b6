"""A tiny random FLUX.1-Kontext-style pipeline folder for CPU tests and the demo.

The folder has the layout of a real checkpoint (``model_index.json`` plus ``transformer/``,
``vae/``, ``text_encoder/``, ``text_encoder_2/``, ``tokenizer/``, ``tokenizer_2/``,
``scheduler/``), every part written with ``save_pretrained`` so the trainer loads it through
the same ``from_pretrained`` path as the real model. Tokenizers are built offline.
"""

from __future__ import annotations

import math
import string
from pathlib import Path

import torch

from trainer.pipeline import save_pipeline

# Sizes of the tiny model; the transformer's head dim (16) equals sum(axes_dims_rope).
TEXT_DIM = 32
LATENT_CHANNELS = 4
CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 32


def _clip_tokenizer():
    """A character-level BPE vocabulary for ``CLIPTokenizer`` (merges as tuples, see ENVIRONMENT.md)."""
    from transformers import CLIPTokenizer

    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for a, b in [("t", "h"), ("e", "d</w>"), ("a", "n")]:
        merged = a + b
        vocab.setdefault(merged, len(vocab))
        merges.append((a, b))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH)


def _t5_tokenizer():
    """A unigram vocabulary of single characters for ``T5Tokenizer``."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(ch, -2.0) for ch in string.ascii_lowercase + string.digits + ".,!?'-"]
    pieces += [("\u2581" + ch, -1.5) for ch in string.ascii_lowercase]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def make_tiny_generator(out_dir: Path, seed: int = 0, pipeline_class: str = "FluxKontextPipeline") -> Path:
    """Write a tiny random multi-reference generator to ``out_dir`` and return the path.

    ``pipeline_class`` names the diffusers pipeline of ``model_index.json``: ``FluxPipeline`` makes
    the same components a tiny text-to-image pipeline (``psr datagen``'s ``t2i``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    clip_tok, t5_tok = _clip_tokenizer(), _t5_tokenizer()
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tok),
            hidden_size=TEXT_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=CLIP_MAX_LENGTH,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            projection_dim=TEXT_DIM,
        )
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok),
            d_model=TEXT_DIM,
            d_kv=16,
            d_ff=64,
            num_layers=2,
            num_heads=2,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    vae = near_identity_vae()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=TEXT_DIM,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    parts = {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": clip,
        "text_encoder_2": t5,
        "tokenizer": clip_tok,
        "tokenizer_2": t5_tok,
        "scheduler": scheduler,
    }
    return save_pipeline(parts, out_dir, pipeline_class)


def near_identity_vae():
    """A tiny ``AutoencoderKL`` built, not trained, to pass images through: latent channel c (of 4) is
    colour channel c averaged over 8x8 pixels, at about unit scale as real FLUX latents are.

    Every residual branch and attention output is zero (blocks pass their input on), the
    down/upsampling convs average / copy, and each colour shares its GroupNorm group with constant
    channels (encoder: ``[c, K, -K, 0]``) or its negative (decoder: ``[c, -c]``) so the norms barely
    distort it; SiLU is used near 2, where it is almost linear. Decoded images keep the layout and
    colours of the input at 1/8 resolution (a random VAE maps every image to about the same output,
    so nothing learnt could be seen in pixels)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=LATENT_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 32, 32),
        norm_num_groups=8,
        layers_per_block=1,
        shift_factor=0.1159,
        scaling_factor=0.3611,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    big, scale, shift = 10.0, vae.config.scaling_factor, vae.config.shift_factor
    silu2, dsilu2 = 2 / (1 + math.exp(-2)), 1 / (1 + math.exp(-2)) + 2 * math.exp(-2) / (1 + math.exp(-2)) ** 2
    norm_std = big / math.sqrt(2)  # std of the encoder's [c, K, -K, 0] groups
    enc, dec = vae.encoder, vae.decoder
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        for m in vae.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.fill_(1.0)
        for block in enc.down_blocks:
            _copy(block.resnets[0].conv_shortcut, ((0, 0),))
            if block.downsamplers:
                _copy(block.downsamplers[0].conv, ((0, 0), (0, 1), (1, 0), (1, 1)), 0.25)  # 2x2 mean
        for block in dec.up_blocks:
            for resnet in block.resnets:
                _copy(resnet.conv_shortcut, ((0, 0),))
            if block.upsamplers:
                _copy(block.upsamplers[0].conv, ((1, 1),))
        for c in range(3):
            enc.conv_in.weight[4 * c, c, 1, 1] = 1.0
            enc.conv_in.bias[4 * c + 1], enc.conv_in.bias[4 * c + 2] = big, -big
            enc.conv_norm_out.bias[4 * c] = 2.0
            enc.conv_out.weight[c, 4 * c, 1, 1] = norm_std / dsilu2 / scale
            enc.conv_out.bias[c] = -silu2 * norm_std / dsilu2 / scale + shift
            dec.conv_in.weight[2 * c, c, 1, 1], dec.conv_in.bias[2 * c] = scale, -shift * scale
            dec.conv_in.weight[2 * c + 1, c, 1, 1], dec.conv_in.bias[2 * c + 1] = -scale, shift * scale
            dec.conv_norm_out.bias[2 * c] = 2.0
            dec.conv_out.weight[c, 2 * c, 1, 1], dec.conv_out.bias[c] = 0.6 / dsilu2, -0.6 * silu2 / dsilu2
        enc.conv_out.bias[3] = shift
        enc.conv_out.bias[LATENT_CHANNELS:] = -10.0  # log-variance: the posterior is almost a point
    return vae


def _copy(conv: torch.nn.Conv2d | None, taps: tuple[tuple[int, int], ...], weight: float = 1.0) -> None:
    """Make ``conv`` pass channel c to channel c through the given kernel taps."""
    if conv is None:
        return
    for c in range(min(conv.in_channels, conv.out_channels)):
        for i, j in taps:
            conv.weight[c, c, i, j] = weight
