"""LoRA targets, EMA under the LoRA's names, GRPO from an SFT LoRA, and export round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from shared.config import load_config
from trainer.checkpoint import lora_state_dict
from trainer.config import DEFAULT_LORA_TARGETS, TrainConfig
from trainer.evaluation.model import load_generate_fn
from trainer.evaluation.synthetic import make_synthetic_dataset
from trainer.export import export_checkpoint
from trainer.local_rewards import InProcessRewardClient
from trainer.lora import merge_lora, read_lora, resolve_targets
from trainer.pipeline import MultiRefGenerator
from trainer.sft import SFTTrainer
from trainer.tiny import make_tiny_generator
from trainer.train import FlowGRPOTrainer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SIZE = 32


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-step SFT run (EMA on) and a 1-step GRPO run started from its checkpoint."""
    root = tmp_path_factory.mktemp("lora")
    generator = make_tiny_generator(root / "generator")
    data = make_synthetic_dataset(root / "data", 1, SIZE).parent
    torch.set_num_threads(1)
    sft_cfg = load_config(TrainConfig, CONFIGS / "tiny_sft_cpu.yaml", [
        f"model.path={generator}", f"data.file={data}", f"run.output_dir={root / 'sft'}", "run.steps=2",
        "run.save_every=2", "run.image_every=100", "sft.validation_items=2", "optim.ema=true",
        "optim.ema_decay=0.5", "optim.lr=0.05",
    ])
    sft = SFTTrainer(sft_cfg)
    sft.train(progress=False)
    sft_ckpt = root / "sft" / "checkpoints" / "step-000002"
    grpo_cfg = load_config(TrainConfig, CONFIGS / "tiny_cpu.yaml", [
        f"model.path={generator}", f"run.output_dir={root / 'grpo'}", f"model.init_lora={sft_ckpt}",
        "run.steps=1", "sampling.group_size=4", "sampling.prompts_per_batch=1", "sampling.batches_per_step=1",
        "sampling.num_steps=2", "optim.train_batch_size=4", "optim.ema=true", "optim.ema_decay=0.5",
    ])
    grpo = FlowGRPOTrainer(grpo_cfg, InProcessRewardClient({"brightness": {"type": "brightness"}}))
    grpo.train(progress=False)
    return {"generator": generator, "sft": sft, "sft_ckpt": sft_ckpt, "grpo": grpo,
            "grpo_ckpt": root / "grpo" / "checkpoints" / "step-000001", "root": root}


def test_default_lora_targets_are_common_flux_practice(runs):
    from diffusers import FluxTransformer2DModel

    assert TrainConfig.model_fields["lora"].default_factory().target_modules == DEFAULT_LORA_TARGETS
    transformer = FluxTransformer2DModel.from_pretrained(runs["generator"], subfolder="transformer")
    names = set(resolve_targets(transformer, DEFAULT_LORA_TARGETS))
    double = "transformer_blocks.0."
    expected = {double + f"attn.{m}" for m in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                                "add_v_proj", "to_add_out")}
    expected |= {double + m for m in ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")}
    expected |= {"single_transformer_blocks.0." + m for m in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp",
                                                              "proj_out")}
    assert names == expected  # every linear layer of the blocks; not the embedders or the final proj_out
    assert "proj_out" not in names and "norm_out.linear" not in names


def test_ema_is_saved_under_the_loras_names(runs):
    sft, ckpt = runs["sft"], runs["sft_ckpt"]
    raw, ema = load_file(str(ckpt / "lora.safetensors")), load_file(str(ckpt / "ema.safetensors"))
    assert ema.keys() == raw.keys()
    with sft.policy.ema.applied():
        averaged = lora_state_dict(sft.policy.transformer)
    for key in raw:
        torch.testing.assert_close(ema[key], averaged[key])
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)  # decay 0.5 over 2 steps: not the raw weights
    meta = json.loads((ckpt / "lora.json").read_text())
    assert meta["alpha"] == sft.cfg.lora.alpha and meta["base_model"] == str(runs["generator"])


def test_validation_and_generation_from_a_checkpoint_use_the_ema_weights(runs):
    sft, ckpt, generator = runs["sft"], runs["sft_ckpt"], runs["generator"]
    items = sft.items[:2]
    validation = sft.generate(items)  # what the validation grid shows
    kw = {"device": "cpu", "steps": sft.cfg.sampling.num_steps, "size": SIZE, "guidance": 1.0}
    prompts, refs = [it.instruction for it in items], [sft.references(it) for it in items]
    seeds = [sft.cfg.run.seed + i for i in range(len(items))]
    from_ckpt = load_generate_fn(str(generator), lora=str(ckpt), **kw)(prompts, refs, seeds)
    for a, b in zip(validation, from_ckpt, strict=True):
        assert np.abs(a.astype(int) - b).max() <= 1
    raw_weights = read_lora(ckpt, weights="raw")
    assert raw_weights.source.endswith("lora.safetensors") and read_lora(ckpt).source.endswith("ema.safetensors")


def test_grpo_from_sft_starts_from_the_merged_sft_model(runs):
    grpo, sft_ckpt, generator = runs["grpo"], runs["sft_ckpt"], runs["generator"]
    sft_model = MultiRefGenerator.from_pretrained(generator).transformer
    merge_lora(sft_model, read_lora(sft_ckpt))  # base + SFT (EMA) weights
    gen = grpo.policy.gen
    cond = gen.condition(["a dog and a cup"], [[np.full((SIZE, SIZE, 3), 90, np.uint8)] * 2], SIZE, SIZE)
    x = gen.initial_noise(1, SIZE, SIZE, torch.Generator().manual_seed(0))
    with torch.no_grad(), grpo.policy.reference() as reference:  # the KL's reference: adapters off
        torch.testing.assert_close(gen.velocity(reference, x, torch.tensor(0.7), cond),
                                   gen.velocity(sft_model, x, torch.tensor(0.7), cond), rtol=1e-5, atol=1e-6)
    meta = json.loads((runs["grpo_ckpt"] / "lora.json").read_text())
    assert meta["init_lora"] == str((sft_ckpt / "ema.safetensors").resolve())
    assert [Path(p.source).parent.name for p in read_lora(runs["grpo_ckpt"]).chain()] == ["step-000002", "step-000001"]


def test_export_round_trip_generates_what_the_checkpoint_generates(runs):
    from peft import PeftModel

    generator, ckpt, root = runs["generator"], runs["grpo_ckpt"], runs["root"]
    kw = {"device": "cpu", "steps": 2, "size": SIZE, "guidance": 1.0}
    prompts = ["a dog and a cup", "a cat, a hat and a ball"]
    refs = [[np.full((SIZE, SIZE, 3), 60 * k, np.uint8) for k in range(1, 3)]] * 2
    refs = [refs[0], [np.full((SIZE, SIZE, 3), 50 * k, np.uint8) for k in range(1, 4)]]

    def images(generate):
        return [img for p, r, s in zip(prompts, refs, (3, 4), strict=True) for img in generate([p], [r], [s])]

    base = images(load_generate_fn(str(generator), **kw))
    expected = images(load_generate_fn(str(generator), lora=str(ckpt), **kw))
    assert any(np.abs(a.astype(int) - b).max() > 0 for a, b in zip(base, expected, strict=True))
    merged = export_checkpoint(ckpt, root / "merged", "merged", dtype="float32")
    peft_dir = export_checkpoint(ckpt, root / "peft", "peft")
    for got in (images(load_generate_fn(str(merged), **kw)),
                images(load_generate_fn(str(generator), lora=str(peft_dir), **kw))):
        for a, b in zip(got, expected, strict=True):
            assert np.abs(a.astype(int) - b).max() <= 1
    # peft's own loader reads the exported folder to the same transformer as our merge
    ours = MultiRefGenerator.from_pretrained(merged).transformer
    theirs = PeftModel.from_pretrained(MultiRefGenerator.from_pretrained(generator).transformer, str(peft_dir))
    theirs = theirs.merge_and_unload()
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_diffusers_loads_both_exports(runs):
    from diffusers import FluxKontextPipeline

    root = runs["root"]
    merged = root / "merged"
    if not merged.exists():
        export_checkpoint(runs["grpo_ckpt"], merged, "merged", dtype="float32")
        export_checkpoint(runs["grpo_ckpt"], root / "peft", "peft")
    ours = FluxKontextPipeline.from_pretrained(merged).transformer
    pipe = FluxKontextPipeline.from_pretrained(runs["generator"])
    pipe.load_lora_weights(root / "peft")
    pipe.fuse_lora()
    pipe.unload_lora_weights()  # keeps the fused weights
    theirs = pipe.transformer.state_dict()
    assert ours.state_dict().keys() == theirs.keys()
    for name, a in ours.state_dict().items():
        torch.testing.assert_close(a, theirs[name], rtol=1e-5, atol=1e-6, msg=name)


def test_bad_lora_paths_are_one_line_errors(runs, tmp_path, capsys):
    from shared.cli import main as psr

    assert psr(["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("psr export: ") and "neither a PEFT adapter folder" in err and "Traceback" not in err
    args = ["train", "--check", "--config", str(CONFIGS / "tiny_cpu.yaml"), "--set", f"model.path={runs['generator']}",
            "--set", "rewards.url=http://127.0.0.1:9", "--set", "model.init_lora=gone"]
    assert psr(args) == 2  # --set paths start at the current folder, checked before anything loads
    assert f"model.init_lora: {Path.cwd() / 'gone'} does not exist" in capsys.readouterr().err
    cfg = load_config(TrainConfig, CONFIGS / "tiny_cpu.yaml", [f"model.path={runs['generator']}",
                                                               f"model.init_lora={tmp_path / 'gone'}"])
    with pytest.raises(FileNotFoundError, match=r"model\.init_lora .*gone does not exist"):
        FlowGRPOTrainer(cfg, InProcessRewardClient({"brightness": {"type": "brightness"}}))
