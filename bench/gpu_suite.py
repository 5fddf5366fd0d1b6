"""One short GPU run that proves the GPU paths: prints one JSON object.

    python -m bench.gpu_suite [--out gpu_suite.json] [--sections serving,subject,judge,flux,bf16,overlap]
    python -m bench.gpu_suite --dry-run          # the same code on tiny models on the CPU (CI runs it)

Random weights of the real architectures, built from configs (no downloads): DINO ViT-S/16,
Grounding DINO tiny (Swin-T + BERT-base), Qwen2.5-VL-7B (judge), Qwen2-VL-7B + the HPSv3 head,
the FLUX.1 transformer (12B). Sections, each timed and reported on its own (a failing section
reports its error; the others still run):

* ``serving``: images/s of ``dino_i`` and ``subject`` called directly vs behind the HTTP server
  (raw uint8, 8 concurrent clients), and the ratio (goal >= 0.85);
* ``subject``: the subject reward's stage split (detect / crop / embed / assign) at 512 px;
* ``judge``: judgements/s of the in-process judge (3 images of 448 px per prompt, batch 16) and
  HPSv3 scores/s (batch 16);
* ``flux``: one LoRA (rank 64) training step of the FLUX-size transformer at 512 px with 2
  references in the sequence, gradient checkpointing: seconds and peak GiB;
* ``bf16``: max |bf16 - fp32| of the dino_i and subject scores on the same images;
* ``overlap``: share of the trainer's step spent waiting for rewards, blocking vs overlapped.

Without a GPU (and without ``--dry-run``) it prints ``{"skipped": ...}`` and exits 0. The dry run builds
the same models the same way (random weights from configs, on the device, in the run's dtype) at
tiny sizes, so a GPU run fails only on what needs a GPU. The tiny HPSv3 tokenizer spells each word
of HPSv3's 430-word instruction in about one token, as Qwen's does, so the sequence has about its
real length; the judge's short prompt is spelt in bytes (~100 text tokens beside 3 x 256 image
tokens). ``tokens_per_prompt`` / ``tokens_per_sample`` report both.

On a machine with only torch + transformers: ``python -m bench.gpu_wheels`` (where PyPI is
reachable) writes the wheels to carry, ``bash bench/gpu_check.sh`` installs them beside the
machine's environment and runs this (README "GPU check").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

SECTIONS = ("serving", "subject", "judge", "flux", "bf16", "overlap")


# ----------------------------------------------------------------------------------------- models
def write_real_vision(root: Path) -> dict[str, dict]:
    """DINO ViT-S/16 and Grounding DINO tiny at their real sizes (random weights) and their rewards."""
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
        ViTConfig,
        ViTModel,
    )

    from reward_server.tiny._tokenizers import bert_tokenizer

    ViTModel(ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                       patch_size=16, image_size=224), add_pooling_layer=False).save_pretrained(root / "dino")
    backbone = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                          out_features=["stage2", "stage3", "stage4"])
    config = GroundingDinoConfig(backbone_config=backbone, text_config=BertConfig(), use_timm_backbone=False)
    GroundingDinoForObjectDetection(config).save_pretrained(root / "grounding-dino")
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(), tokenizer=bert_tokenizer()).save_pretrained(
        root / "grounding-dino")
    detector = {"kind": "grounding_dino", "model": str(root / "grounding-dino")}
    common = {"device": "cuda", "max_batch_size": 64, "max_wait_ms": 5}
    return {
        "dino_i": {"type": "image_similarity", "model": str(root / "dino"), **common, "options": {"backbone": "dino"}},
        "subject": {"type": "subject_consistency", "model": str(root / "dino"), **common,
                    "options": {"detector": detector, "embedder": "dino"}},
    }


def qwen_vl_config(generation: str, tokenizer, real: bool = True) -> Any:
    """Qwen2-VL-7B / Qwen2.5-VL-7B sizes (or tiny ones for the dry run) with ``tokenizer``'s special-token ids."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    vocab = tokenizer.get_vocab()
    ids = dict(image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
               vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"])
    if real:
        text = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                    num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                    rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[16, 24, 24]))
    else:  # head_dim 16 = 2 * sum(mrope_section)
        text = dict(vocab_size=len(tokenizer) + 8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32768,
                    rope_parameters=dict(rope_type="default", rope_theta=1e4, mrope_section=[2, 3, 3]))
    if generation == "qwen2_5_vl":
        vision = (dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                       window_size=112, fullatt_block_indexes=[7, 15, 23, 31]) if real else
                  dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                       window_size=56, fullatt_block_indexes=[1]))
        vision.update(patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    vision = (dict(depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4, num_heads=16) if real else
              dict(depth=2, embed_dim=32, hidden_size=32, mlp_ratio=2, num_heads=2))
    return Qwen2VLConfig(text_config=text, vision_config={**vision, "patch_size": 14}, **ids)


@contextlib.contextmanager
def built_on(device: torch.device, dtype: torch.dtype):
    """Build modules directly on ``device`` in ``dtype``: a 12B model never exists in float32 first."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(before)


def flux_config(real: bool) -> dict:
    if real:  # FLUX.1 [dev] / Kontext transformer
        return dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                    guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    return dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                axes_dims_rope=(4, 6, 6))


# --------------------------------------------------------------------------------------- sections
def _samples(n: int, size: int, subjects: int = 2, seed: int = 0):
    from shared.protocol import Sample, Subject

    rng = np.random.default_rng(seed)
    refs = tuple(Subject(c, rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for c in ("dog", "cup")[:subjects])
    return [Sample(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "a dog next to a cup", refs) for _ in range(n)]


def _rewards(config_path: Path, names: list[str], overrides: list[str] = ()) -> dict:
    from reward_server.config import ServerConfig
    from reward_server.registry import build_rewards, load_rewards
    from shared.config import load_config

    rewards = build_rewards(load_config(ServerConfig, config_path, list(overrides)), names)
    load_rewards(rewards)
    return rewards


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def serving(ctx: dict) -> dict:
    """Bare vs served images/s per reward, over real HTTP with concurrent clients."""
    from reward_server.app import create_app
    from reward_server.config import ServerConfig
    from reward_server.serving import BackgroundServer
    from shared.client import RewardClient
    from shared.config import load_config

    out = {}
    for name in ("dino_i", "subject"):
        rewards = _rewards(ctx["config"], [name], ctx["overrides"])
        reward = rewards[name]
        samples = _samples(ctx["n"], ctx["size"])
        batch = reward.spec.max_batch_size
        reward.score(samples[:batch])
        _sync()
        start = time.perf_counter()
        for i in range(0, len(samples), batch):
            reward.score(samples[i : i + batch])
        _sync()
        bare = len(samples) / (time.perf_counter() - start)
        config = load_config(ServerConfig, ctx["config"], list(ctx["overrides"]))
        config.rewards = {name: config.rewards[name]}
        server = BackgroundServer(create_app(config, rewards=rewards))
        url = server.start()
        try:
            with RewardClient(url, image_format="raw", timeout=600) as client:
                client.wait_until_ready(120)
                chunks = [samples[i : i + 16] for i in range(0, len(samples), 16)]

                def send(chunk, client=client, name=name):
                    client.score([s.image for s in chunk], {name: 1.0}, prompts=[s.prompt for s in chunk],
                                 subjects=[[(x.category, x.reference) for x in s.subjects] for s in chunk])

                send(chunks[0])
                start = time.perf_counter()
                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(send, chunks))
                served = len(samples) / (time.perf_counter() - start)
        finally:
            server.stop()
        out[name] = {"bare_images_per_s": round(bare, 1), "served_images_per_s": round(served, 1),
                     "served_over_bare": round(served / bare, 3), "goal": 0.85}
    return out


def subject(ctx: dict) -> dict:
    reward = _rewards(ctx["config"], ["subject"], ctx["overrides"])["subject"]
    out = {}
    for batch in ctx["subject_batches"]:
        samples = _samples(batch, ctx["size"])
        reward.score(samples)
        reward.cache.clear()
        _sync()
        start = time.perf_counter()
        reward.score(samples)
        _sync()
        total = time.perf_counter() - start
        out[f"batch_{batch}"] = {"images_per_s": round(batch / total, 1),
                                 **{k: round(v, 4) for k, v in reward.last_timings.items()}}
    return out


JUDGE_PIXELS = (3136, 200704)  # min / max pixels per image, as configs/rewards_psr.yaml sets (448 x 448)


def judge(ctx: dict) -> dict:
    """The in-process judge as configured, its model replaced by random weights of the real size."""
    from transformers import AutoModelForImageTextToText

    from reward_server.models.judge import ANSWER_PREFIX, JudgeQuery, TransformersJudge

    device, dtype, real = ctx["device"], ctx["dtype"], ctx["real"]
    judge = TransformersJudge(str(ctx["tiny"] / "qwen2_5_vl"), device, dtype, *JUDGE_PIXELS, min_digit_mass=0.0,
                              batch_size=16)
    config = qwen_vl_config("qwen2_5_vl", judge.processor.tokenizer, real)
    with built_on(device, dtype):
        judge.model = AutoModelForImageTextToText.from_config(config, dtype=dtype).eval()
    side, n = (448, 32) if real else (56, 2)
    rng = np.random.default_rng(0)
    content = [{"type": "text", "text": "Reference 1:"}, {"type": "image"}, {"type": "text", "text": "Reference 2:"},
               {"type": "image"}, {"type": "text", "text": "Generated:"}, {"type": "image"},
               {"type": "text", "text": "Rate 0-10 how well the image follows: a dog next to a cup."}]
    queries = [JudgeQuery(content, [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(3)])
               for _ in range(n)]
    tokens = judge.inputs(queries[:1], ANSWER_PREFIX)["input_ids"].shape[1]
    judge.judge(queries[:2])
    _sync()
    start = time.perf_counter()
    judge.judge(queries)
    _sync()
    out = {"judgements_per_s": round(n / (time.perf_counter() - start), 2), "images_per_prompt": 3, "side": side,
           "tokens_per_prompt": tokens}
    del judge
    out["hpsv3"] = _hpsv3_rate(ctx)
    return out


def _hpsv3_rate(ctx: dict) -> dict:
    """HPSv3Model as the reward runs it, on random weights of the real size (no 16 GB file read)."""
    from reward_server.models.hpsv3 import HPSv3Model

    device, dtype, real = ctx["device"], ctx["dtype"], ctx["real"]
    prompts = ["a dog next to a cup", "a photo of a red teapot and a green cup on a wooden table"]
    base = ctx["tiny"] / "hpsv3" / "base"  # processor files; its tokenizer spells the template's words as Qwen's does

    class RandomHPSv3(HPSv3Model):
        def model_config(self, base_model):
            from transformers import AutoProcessor

            self.config = qwen_vl_config("qwen2_vl", AutoProcessor.from_pretrained(base_model).tokenizer, real)
            return self.config

        def read_state(self, _checkpoint):
            from transformers import Qwen2VLModel

            config = self.model_config(str(base))
            with built_on(device, dtype):
                model = Qwen2VLModel(config)
            state = {("model." + k.removeprefix("language_model.")) if k.startswith("language_model.") else k: v
                     for k, v in model.state_dict().items()}
            return {**state, **{f"rm_head.{k}": v for k, v in _head_state(config.text_config.hidden_size).items()}}

    model = RandomHPSv3("random", str(base), device, dtype)
    n = 32 if real else 2
    rng = np.random.default_rng(1)
    side = 512 if real else 64
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(n)]
    texts = [prompts[i % 2] for i in range(n)]
    tokens = model.inputs(images[:1], texts[:1])["input_ids"].shape[1]
    model.score(images[:2], texts[:2])
    _sync()
    start = time.perf_counter()
    for i in range(0, n, 16):
        model.score(images[i : i + 16], texts[i : i + 16])
    _sync()
    return {"scores_per_s": round(n / (time.perf_counter() - start), 2), "batch": 16, "tokens_per_sample": tokens}


def _head_state(hidden: int) -> dict:
    from reward_server.models.hpsv3 import build_head

    return build_head(hidden).state_dict()


def flux(ctx: dict) -> dict:
    """One LoRA training step of the FLUX-size transformer: target + 2 references in one sequence."""
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig

    device, real = ctx["device"], ctx["real"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)  # as the trainer does (ENVIRONMENT.md)
        torch.cuda.reset_peak_memory_stats()
    cfg = flux_config(real)
    with built_on(device, dtype):
        model = FluxTransformer2DModel(**cfg)
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=64 if real else 4, lora_alpha=128 if real else 8, init_lora_weights="gaussian",
                                 target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.enable_gradient_checkpointing()
    side = 32 if real else 4  # latent tokens per side: 512 px / 8 (VAE) / 2 (packing)
    tokens, refs, text = side * side, 2, 512 if real else 8
    h, w = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    ids = [torch.stack([torch.full_like(h, f), h, w], -1).reshape(-1, 3) for f in range(refs + 1)]  # frame-wise ids
    img_ids = torch.cat(ids).float().to(device)
    kwargs = dict(
        hidden_states=torch.randn(1, tokens * (refs + 1), cfg["in_channels"], device=device, dtype=dtype),
        encoder_hidden_states=torch.randn(1, text, cfg["joint_attention_dim"], device=device, dtype=dtype),
        pooled_projections=torch.randn(1, cfg["pooled_projection_dim"], device=device, dtype=dtype),
        timestep=torch.full((1,), 0.5, device=device, dtype=dtype), guidance=torch.full((1,), 2.5, device=device, dtype=dtype),
        img_ids=img_ids, txt_ids=torch.zeros(text, 3, device=device),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    times = []
    for _ in range(2):  # the first step includes kernel warm-up
        _sync()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            out = model(**kwargs, return_dict=False)[0][:, :tokens]
        out.float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"step_s": round(times[-1], 3), "peak_gib": None if peak is None else round(peak, 2),
            "sequence": tokens * (refs + 1) + text, "lora_params": sum(p.numel() for p in params),
            "transformer_params": sum(p.numel() for p in model.parameters())}


def bf16(ctx: dict) -> dict:
    out = {}
    samples = _samples(16 if ctx["real"] else 2, ctx["size"])
    for name in ("dino_i", "subject"):
        scores = {}
        for dtype in ("float32", "bfloat16"):
            reward = _rewards(ctx["config"], [name], [*ctx["overrides"], f"rewards.{name}.dtype={dtype}"])[name]
            scores[dtype] = np.array([np.nan if r.score is None else r.score for r in reward.score(samples)])
        diff = np.abs(scores["float32"] - scores["bfloat16"])
        out[name] = {"max_abs_diff": float(np.nanmax(diff)) if np.isfinite(diff).any() else None,
                     "fp32_mean": float(np.nanmean(scores["float32"]))}
    return out


def overlap(ctx: dict) -> dict:
    """The tiny generator against a reward of fixed latency: how much of a step waits for rewards."""
    from bench.overlap import interleaved, serve
    from trainer.config import tiny_run_config
    from trainer.train import FlowGRPOTrainer

    server, url = serve(ctx["latency"], 8)
    small = [] if ctx["real"] else ["sampling.group_size=2", "sampling.num_steps=2", "optim.train_batch_size=4",
                                    "grpo.train_timesteps=[1]"]
    try:
        trainers = {
            mode: FlowGRPOTrainer(tiny_run_config(ctx["tiny"] / "generator", url, ctx["work"] / f"overlap-{mode}", [
                f"run.steps={ctx['steps'] + 1}", "sampling.batches_per_step=2", "sampling.prompts_per_batch=1",
                "rewards.reward_weights={brightness: 1.0, latency: 0.0}", f"rewards.overlap={str(mode == 'overlapped').lower()}",
                f"run.save_every={ctx['steps'] + 1}", "run.image_every=1000", *small]))
            for mode in ("blocking", "overlapped")
        }
        if ctx["real"]:
            totals = interleaved(trainers, ctx["steps"])  # step 0 is warm-up
        else:  # the dry run proves the code path: one step per mode, no warm-up
            metrics = {mode: t.train_step(0) for mode, t in trainers.items()}
            totals = {mode: {k: m.get(f"time/{k}", 0.0) for k in ("reward_wait_s", "step_s")} for mode, m in metrics.items()}
    finally:
        server.stop()
    return {mode: {"reward_wait_fraction": round(t["reward_wait_s"] / t["step_s"], 3) if t["step_s"] else None,
                   "step_s": round(t["step_s"] / ctx["steps"], 3)} for mode, t in totals.items()}


# ------------------------------------------------------------------------------------------- main
def context(dry_run: bool, work: Path, tiny: Path | None = None) -> dict:
    from reward_server.models.quiet import quiet_model_libraries
    from reward_server.tiny import CONFIG_NAME, make_tiny

    quiet_model_libraries()
    tiny_config = Path(tiny) / CONFIG_NAME if tiny else make_tiny(work / "tiny")
    ctx: dict[str, Any] = {"work": work, "tiny": tiny_config.parent, "real": not dry_run}
    if dry_run:
        ctx.update(config=tiny_config, overrides=["rewards.dino_i.device=cpu", "rewards.subject.device=cpu"],
                   device=torch.device("cpu"), dtype=torch.float32, n=8, size=64, subject_batches=[2],
                   latency=0.01, steps=1)
        return ctx
    import yaml

    config = work / "rewards_real.yaml"
    config.write_text(yaml.safe_dump({"rewards": write_real_vision(work / "real")}))
    ctx.update(config=config, overrides=[], device=torch.device("cuda"), dtype=torch.bfloat16, n=512, size=512,
               subject_batches=[16, 64], latency=0.5, steps=3)
    return ctx


def check_real_configs() -> dict:
    """Build every real-size architecture on the meta device: config mistakes show without a GPU."""
    from diffusers import FluxTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLModel

    from reward_server.tiny._tokenizers import qwen_tokenizer

    tokenizer = qwen_tokenizer()
    with torch.device("meta"):
        counts = {
            "qwen2_5_vl_7b": sum(p.numel() for p in Qwen2_5_VLForConditionalGeneration(qwen_vl_config("qwen2_5_vl", tokenizer)).parameters()),
            "qwen2_vl_7b": sum(p.numel() for p in Qwen2VLModel(qwen_vl_config("qwen2_vl", tokenizer)).parameters()),
            "flux_transformer": sum(p.numel() for p in FluxTransformer2DModel(**flux_config(True)).parameters()),
        }
    return {k: f"{v / 1e9:.2f}B" for k, v in counts.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: proves the code runs")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--tiny", help="an existing `psr make-tiny` folder (default: written to a temp folder)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    if not args.dry_run and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA GPU here; run with --dry-run for the CPU check"}))
        return 0
    report: dict[str, Any] = {"mode": "dry-run (tiny, CPU)" if args.dry_run else "gpu",
                              "torch": torch.__version__, "device": None if args.dry_run else torch.cuda.get_device_name()}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="psr-gpu-suite-") as tmp:
        ctx = context(args.dry_run, Path(tmp), args.tiny)
        report["real_size_params"] = check_real_configs()
        for name in sections:
            t0 = time.perf_counter()
            try:
                report[name] = globals()[name](ctx)
            except Exception as exc:  # one broken section must not hide the others' numbers
                report[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=3)}
            report[name]["seconds"] = round(time.perf_counter() - t0, 1)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 1 if any(isinstance(v, dict) and "error" in v for v in report.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
