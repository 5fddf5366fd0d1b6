"""The multi-reference generator: FLUX.1 Kontext-style components with several reference images.

Reference images are VAE-encoded, packed into 2x2 patches and appended to the target's token
sequence; position ids are "frame-wise": reference ``i`` (1-based) gets ``(i, h, w)``, the target
``(0, h, w)``. Only the target tokens' velocity is used. Everything is loaded with
``from_pretrained`` from a folder with the diffusers pipeline layout (``model_index.json``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.images import to_uint8_array
from shared.paths import check_model_ref

log = logging.getLogger(__name__)
MAX_REFERENCES = 4


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): each 2x2 latent patch becomes one token."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"latent grid {h}x{w} must have even sides (image side a multiple of 16)")
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of ``pack_latents`` for a latent grid of ``h`` x ``w``."""
    b, _, c4 = tokens.shape
    x = tokens.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)


def frame_ids(frame: int, h: int, w: int) -> torch.Tensor:
    """Position ids ``(frame, row, col)`` of a packed ``h/2`` x ``w/2`` token grid, shape (h/2*w/2, 3)."""
    rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
    ids = torch.stack([torch.full_like(rows, frame), rows, cols], dim=-1)
    return ids.reshape(-1, 3).float()


def time_shift_mu(seq_len: int, cfg: Any) -> float:
    """Resolution-dependent shift of the sigma schedule (linear in the token count, as in FLUX)."""
    base_len, max_len = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
    base_shift, max_shift = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return seq_len * slope + base_shift - slope * base_len


def shift_sigmas(sigmas: np.ndarray, seq_len: int, cfg: Any) -> np.ndarray:
    """Shift noise levels in (0, 1] as a flow-matching scheduler config says: FLUX's exponential shift by
    ``mu(seq_len)`` when ``use_dynamic_shifting``, else SD3's static ``shift * s / (1 + (shift - 1) s)``."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if cfg.get("use_dynamic_shifting", False):
        mu = time_shift_mu(seq_len, cfg)
        return np.exp(mu) / (np.exp(mu) + (1.0 / sigmas - 1.0))
    shift = cfg.get("shift", 1.0)
    return shift * sigmas / (1 + (shift - 1) * sigmas)


@dataclass
class Conditioning:
    """What the transformer is conditioned on, per sample (batch dim first) plus shared ids."""

    prompt_embeds: torch.Tensor  # (B, L, D) T5 states
    pooled: torch.Tensor  # (B, P) CLIP pooled output
    ref_tokens: torch.Tensor | None  # (B, R * S_ref, 4C) packed reference latents
    txt_ids: torch.Tensor  # (L, 3)
    img_ids: torch.Tensor  # (S + R * S_ref, 3): target ids then reference ids

    def index(self, idx: torch.Tensor | slice | list[int]) -> Conditioning:
        """The conditioning of a subset of the batch."""
        return Conditioning(
            self.prompt_embeds[idx],
            self.pooled[idx],
            None if self.ref_tokens is None else self.ref_tokens[idx],
            self.txt_ids,
            self.img_ids,
        )

    def to(self, device: torch.device | str) -> Conditioning:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return Conditioning(**{k: None if v is None else v.to(device) for k, v in moved.items()})

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        """Concatenate batches with the same layout (same number and size of references)."""
        first = parts[0]
        for p in parts[1:]:
            if (
                p.img_ids.shape != first.img_ids.shape
                or p.prompt_embeds.shape[1:] != first.prompt_embeds.shape[1:]
            ):
                raise ValueError("cannot batch samples with different reference layouts")
        refs = None if first.ref_tokens is None else torch.cat([p.ref_tokens for p in parts])
        return Conditioning(
            torch.cat([p.prompt_embeds for p in parts]),
            torch.cat([p.pooled for p in parts]),
            refs,
            first.txt_ids,
            first.img_ids,
        )


class MultiRefGenerator:
    """Text encoders, VAE, transformer and scheduler of a FLUX.1 Kontext-style model."""

    def __init__(
        self,
        transformer,
        vae,
        text_encoder,
        text_encoder_2,
        tokenizer,
        tokenizer_2,
        scheduler,
        max_sequence_length: int = 512,
    ):
        self.transformer, self.vae = transformer, vae
        self.text_encoder, self.text_encoder_2 = text_encoder, text_encoder_2
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.scheduler = scheduler
        self.max_sequence_length = min(max_sequence_length, tokenizer_2.model_max_length)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = vae.config.latent_channels

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_sequence_length: int = 512,
    ) -> MultiRefGenerator:
        """Load every component from a pipeline folder or hub id (subfolders as in ``model_index.json``)."""
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        path = str(path)
        check_model_ref(path, "generator")  # a missing local folder is not retried as a hub id
        if Path(path).exists() and not (Path(path) / "model_index.json").is_file():
            raise FileNotFoundError(f"{path} is not a pipeline folder: model_index.json is missing")
        kw = {"dtype": dtype}
        parts = dict(
            transformer=FluxTransformer2DModel.from_pretrained(path, subfolder="transformer", **kw),
            vae=AutoencoderKL.from_pretrained(path, subfolder="vae", **kw),
            text_encoder=CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype),
            text_encoder_2=T5EncoderModel.from_pretrained(path, subfolder="text_encoder_2", dtype=dtype),
            tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"),
            tokenizer_2=T5TokenizerFast.from_pretrained(path, subfolder="tokenizer_2"),
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler"),
        )
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
            parts[name].requires_grad_(False).eval().to(device)
        return cls(**parts, max_sequence_length=max_sequence_length)

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write every component with ``save_pretrained`` plus ``model_index.json`` (diffusers' layout)."""
        return save_pipeline(
            {
                "transformer": self.transformer, "vae": self.vae, "text_encoder": self.text_encoder,
                "text_encoder_2": self.text_encoder_2, "tokenizer": self.tokenizer,
                "tokenizer_2": self.tokenizer_2, "scheduler": self.scheduler,
            },
            out_dir,
        )

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Latent grid of an image; sides must be multiples of ``2 * vae_scale_factor``."""
        step = 2 * self.vae_scale_factor
        if height % step or width % step:
            raise ValueError(f"image size {width}x{height} must be a multiple of {step} on each side")
        return height // self.vae_scale_factor, width // self.vae_scale_factor

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """T5 token states (B, L, D), CLIP pooled embedding (B, P) and text ids (L, 3)."""
        prompts = list(prompts)
        clip_ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        pooled = self.text_encoder(clip_ids, output_hidden_states=False).pooler_output
        t5_ids = self.tokenizer_2(
            prompts,
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        embeds = self.text_encoder_2(t5_ids, output_hidden_states=False)[0]
        txt_ids = torch.zeros(embeds.shape[1], 3, device=self.device)
        return embeds, pooled, txt_ids

    def _image_tensor(self, images: Sequence[Any], height: int, width: int) -> torch.Tensor:
        """uint8/PIL/tensor images -> (B, 3, H, W) in [-1, 1], resized to ``height`` x ``width``."""
        from PIL import Image

        out = []
        for img in images:
            arr = to_uint8_array(img)
            if arr.shape[:2] != (height, width):
                arr = np.asarray(Image.fromarray(arr).resize((width, height), Image.BICUBIC))
            out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
        x = torch.stack(out).to(self.device, self.dtype) / 127.5 - 1.0
        return x

    @torch.no_grad()
    def encode_images(self, images: Sequence[Any], height: int, width: int) -> torch.Tensor:
        """VAE latents (mode of the posterior), shifted and scaled, (B, C, h, w)."""
        x = self._image_tensor(images, height, width)
        latents = self.vae.encode(x).latent_dist.mode()
        return (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    def condition(
        self,
        prompts: Sequence[str],
        references: Sequence[Sequence[Any]],
        height: int,
        width: int,
        ref_size: int | None = None,
    ) -> Conditioning:
        """Conditioning for a batch whose samples all have the same number (0-4) of references."""
        counts = {len(r) for r in references}
        if len(counts) > 1:
            raise ValueError(f"a batch must share one reference count, got {sorted(counts)}")
        n_refs = counts.pop() if counts else 0
        if n_refs > MAX_REFERENCES:
            raise ValueError(f"at most {MAX_REFERENCES} reference images per sample, got {n_refs}")
        embeds, pooled, txt_ids = self.encode_prompt(prompts)
        h, w = self.latent_size(height, width)
        ids = [frame_ids(0, h, w)]
        ref_tokens = None
        if n_refs:
            rh, rw = (ref_size, ref_size) if ref_size else (height, width)
            lh, lw = self.latent_size(rh, rw)
            flat = [img for refs in references for img in refs]
            packed = pack_latents(self.encode_images(flat, rh, rw))  # (B*R, S_ref, 4C)
            ref_tokens = packed.view(len(prompts), n_refs * packed.shape[1], packed.shape[2])
            ids += [frame_ids(i + 1, lh, lw) for i in range(n_refs)]
        return Conditioning(embeds, pooled, ref_tokens, txt_ids, torch.cat(ids).to(self.device))

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        """The ``num_steps + 1`` noise levels from 1 to 0 (shifted for the resolution, as FLUX does)."""
        base = np.linspace(1.0, 1.0 / num_steps, num_steps)
        shifted = self.shift_sigmas(base, height, width)
        return torch.tensor(np.append(shifted, 0.0), dtype=torch.float32)

    def shift_sigmas(self, sigmas: np.ndarray, height: int, width: int) -> np.ndarray:
        """The scheduler's shift of noise levels at this image size (sampling and SFT timesteps share it)."""
        h, w = self.latent_size(height, width)
        return shift_sigmas(sigmas, (h // 2) * (w // 2), self.scheduler.config)

    def initial_noise(self, batch: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """Packed Gaussian noise (B, S, 4C), drawn on the CPU so it is the same on every device."""
        h, w = self.latent_size(height, width)
        noise = torch.randn(batch, self.latent_channels, h, w, generator=generator)
        return pack_latents(noise).to(self.device)

    def velocity(
        self,
        transformer: torch.nn.Module,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        guidance_scale: float = 1.0,
        negative: Conditioning | None = None,
        cfg_scale: float = 1.0,
    ) -> torch.Tensor:
        """Predicted flow velocity of the target tokens; true CFG when ``negative`` and ``cfg_scale`` > 1."""
        v = self._forward(transformer, latents, sigma, cond, guidance_scale)
        if negative is not None and cfg_scale != 1.0:
            v_neg = self._forward(transformer, latents, sigma, negative, guidance_scale)
            v = v_neg + cfg_scale * (v - v_neg)
        return v

    def _forward(self, transformer, latents, sigma, cond, guidance_scale):
        b, s = latents.shape[:2]
        hidden = (
            latents if cond.ref_tokens is None else torch.cat([latents, cond.ref_tokens.to(latents.dtype)], 1)
        )
        timestep = sigma.expand(b).to(latents.dtype) if sigma.dim() == 0 else sigma.to(latents.dtype)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), guidance_scale, device=latents.device, dtype=torch.float32)
        out = transformer(
            hidden_states=hidden,
            timestep=timestep,
            guidance=guidance,
            pooled_projections=cond.pooled,
            encoder_hidden_states=cond.prompt_embeds,
            txt_ids=cond.txt_ids,
            img_ids=cond.img_ids,
            return_dict=False,
        )[0]
        return out[:, :s]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed latents -> images (B, 3, H, W) in [0, 1]."""
        h, w = self.latent_size(height, width)
        z = unpack_latents(latents.to(self.dtype), h, w)
        z = z / self.vae.config.scaling_factor + self.vae.config.shift_factor
        images = self.vae.decode(z, return_dict=False)[0]
        return ((images.float() + 1) / 2).clamp(0, 1)


def save_pipeline(parts: dict[str, Any], out_dir: str | Path, class_name: str = "FluxKontextPipeline") -> Path:
    """A FLUX pipeline folder: each part saved in its subfolder, ``model_index.json`` naming them, so
    ``from_pretrained`` here and diffusers' ``<class_name>.from_pretrained`` both load it."""
    import diffusers

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": class_name, "_diffusers_version": diffusers.__version__}
    for name, part in parts.items():
        part.save_pretrained(out_dir / name)
        library = "diffusers" if type(part).__module__.startswith("diffusers") else "transformers"
        index[name] = [library, type(part).__name__]
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2))
    return out_dir


def to_uint8_images(images: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) floats in [0, 1] -> list of (H, W, 3) uint8 arrays."""
    arr = (images.detach().float().cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return list(arr)
