"""A tiny random FLUX.1-Kontext-style pipeline folder for CPU tests and the demo.

The folder has the layout of a real checkpoint (``model_index.json`` plus ``transformer/``,
``vae/``, ``text_encoder/``, ``text_encoder_2/``, ``tokenizer/``, ``tokenizer_2/``,
``scheduler/``), every part written with ``save_pretrained`` so the trainer loads it through
the same ``from_pretrained`` path as the real model. Tokenizers are built offline.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

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
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
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
    with torch.no_grad():
        # Zero-init the decoder's residual branches (resnet conv2, attention out): a random decoder's
        # stacked GroupNorms otherwise wash out the latents, and no reward could be learnt.
        for name, module in vae.decoder.named_modules():
            if name.endswith(("conv2", "to_out.0")):
                module.weight.zero_()
                module.bias.zero_()
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
    for name, part in parts.items():
        part.save_pretrained(out_dir / name)
    index = {"_class_name": pipeline_class, "_diffusers_version": "0.42.1"}
    index.update({name: [_library(part), type(part).__name__] for name, part in parts.items()})
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2))
    return out_dir


def _library(part: object) -> str:
    return "diffusers" if type(part).__module__.startswith("diffusers") else "transformers"
