"""``psr bench generate`` end to end on the tiny multi-reference pipeline, then ``psr bench score``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.servers import REPO, psr_command, repo_env, server_process

pytestmark = pytest.mark.slow


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(psr_command(*args), cwd=REPO, env=repo_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def generator(tiny_config: Path) -> Path:
    """The tiny generator ``psr make-tiny`` writes beside its rewards.yaml."""
    path = tiny_config.parent / "generator"
    assert (path / "model_index.json").is_file()
    return path


def make_lora(generator: Path, out: Path) -> tuple[Path, Path]:
    """One random (non-zero) LoRA on the tiny transformer in both forms ``--lora`` reads: a PEFT
    adapter folder, and a checkpoint written by ``psr train``'s own ``lora_state_dict`` (no config)."""
    import torch
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import save_file

    from trainer.checkpoint import lora_state_dict

    torch.manual_seed(0)
    config = dict(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v"])
    model = get_peft_model(FluxTransformer2DModel.from_pretrained(generator, subfolder="transformer"),
                           LoraConfig(**config, init_lora_weights=False))
    model.save_pretrained(out / "peft")
    trained = FluxTransformer2DModel.from_pretrained(generator, subfolder="transformer")
    trained.add_adapter(LoraConfig(**config))  # as trainer.policy does
    weights = {k.removeprefix("base_model.model."): v for k, v in get_peft_model_state_dict(model).items()}
    assert not set_peft_model_state_dict(trained, weights).unexpected_keys
    (out / "step-000001").mkdir(parents=True)
    save_file(lora_state_dict(trained), str(out / "step-000001" / "lora.safetensors"))
    return out / "peft", out / "step-000001"


def generate(bench: Path, model: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run("bench", "generate", "--data", str(bench), "--model", str(model), "--out", str(out),
               "--steps", "2", "--size", "32", "--ref-size", "32", "--batch-size", "4", "--device", "cpu", "--cpu-threads", "1",
               "--no-progress", *extra)


def test_generate_rerun_lora_then_score(generator, tmp_path):
    bench = tmp_path / "bench"
    assert run("bench", "make-synthetic", str(bench), "--items", "1", "--size", "32").returncode == 0
    out = tmp_path / "gen"

    full = generate(bench, generator, out)
    assert full.returncode == 0, full.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["model"] == str(generator) and doc["meta"]["lora"] is None
    paths = {s: [out / e["result_path"] for e in items] for s, items in doc["subsets"].items()}
    assert len(paths) == 7 and all(p.is_file() for ps in paths.values() for p in ps)
    stamps = {p: p.stat().st_mtime_ns for ps in paths.values() for p in ps}
    again = generate(bench, generator, out)  # everything done: nothing generated (interrupted runs: unit tests)
    assert again.returncode == 0 and all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    with Image.open(paths["Four"][0]) as img:
        assert img.size == (32, 32)
        base = np.asarray(img.convert("RGB"))

    peft_dir, _ = make_lora(generator, tmp_path / "lora")
    tuned_run = generate(bench, generator, tmp_path / "gen-peft", "--lora", str(peft_dir), "--subsets", "Four")
    assert tuned_run.returncode == 0, tuned_run.stderr
    tuned = np.asarray(Image.open(tmp_path / "gen-peft" / "images" / "Four" / "0000.png").convert("RGB"))
    assert np.abs(tuned.astype(int) - base).max() > 0  # the adapter changed the model
    refused = generate(bench, generator, tmp_path / "gen-peft", "--lora", str(peft_dir), "--subsets", "Four",
                       "--seed", "3")
    assert refused.returncode == 2 and "other seed" in refused.stderr and "Traceback" not in refused.stderr

    config = tmp_path / "rewards.yaml"  # model-free rewards: this test is about the generate -> score path
    config.write_text(yaml.safe_dump({"rewards": {"brightness": {"type": "brightness"},
                                                  "red": {"type": "color", "options": {"target": [255, 0, 0]}}}}))
    sets = ["rewards.sc=brightness", "rewards.sc_paper=null", "rewards.sa=red", "rewards.sa_position=brightness",
            "rewards.aesthetics=null"]
    with server_process(config) as url:
        scored = run("bench", "score", "--data", str(bench), "--results", str(out), "--server", url,
                     "--out", str(tmp_path / "scored"), "--no-progress", *[a for s in sets for a in ("--set", s)])
    assert scored.returncode == 0, scored.stderr
    recs = [json.loads(x) for x in (tmp_path / "scored" / "scores.jsonl").read_text().splitlines()]
    assert len(recs) == 7 and all(not r["errors"] for r in recs)
    four = next(r for r in recs if r["key"] == "Four/0000")
    assert four["scores"]["sc"] == pytest.approx(base.mean() / 255.0, abs=1e-6)
    assert "| Overall" in scored.stdout and "SC (paper)" not in scored.stdout


def test_lora_as_peft_folder_or_train_checkpoint_gives_the_same_model(generator, tmp_path):
    from shared.config import ConfigError
    from trainer.evaluation.model import load_generate_fn

    peft_dir, checkpoint = make_lora(generator, tmp_path / "lora")
    kw = {"device": "cpu", "steps": 2, "size": 32, "ref_size": 32}
    refs = [[np.full((32, 32, 3), 40 * k, np.uint8) for k in range(1, 3)]]
    base = load_generate_fn(str(generator), **kw)(["a dog and a cup"], refs, [7])[0]
    via_peft = load_generate_fn(str(generator), lora=str(peft_dir), **kw)(["a dog and a cup"], refs, [7])[0]
    via_ckpt = load_generate_fn(str(generator), lora=str(checkpoint), lora_alpha=8, **kw)(["a dog and a cup"], refs, [7])[0]
    assert np.abs(via_peft.astype(int) - base).max() > 0
    assert np.abs(via_peft.astype(int) - via_ckpt).max() <= 1  # the same weights, read either way
    with pytest.raises(ConfigError, match="pass --lora-alpha"):
        load_generate_fn(str(generator), lora=str(checkpoint), **kw)
    with pytest.raises(ConfigError, match="neither a PEFT adapter folder"):
        load_generate_fn(str(generator), lora=str(tmp_path), **kw)
    with pytest.raises(ConfigError, match="cannot load the generator"):
        load_generate_fn(str(tmp_path / "no-model"), **kw)
