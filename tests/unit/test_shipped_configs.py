"""Every shipped config passes `--check`, and the configs agree with each other on reward names.

A server config (``rewards:`` of specs) goes through `psr serve --check` and `psr worker --check`;
a training config through `psr train --check` with its placeholders filled in, paired with the
reward config it names. A new file in configs/ is checked without anyone listing it here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from reward_server.auth import load_api_keys
from reward_server.config import ServerConfig
from shared.cli import main
from shared.config import ConfigError, load_config
from trainer.evaluation.scoring import BenchConfig

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# the server config each training config is meant for
PAIRS = {"psr_flux_kontext.yaml": "rewards_psr.yaml"}


def config_kind(path: Path) -> str:
    """'serve' (rewards.yaml), 'train' (a training run) or 'datagen' (a psr datagen run)."""
    data = yaml.safe_load(path.read_text())
    return "train" if "model" in data else "datagen" if "t2i" in data else "serve"


def is_server_config(path: Path) -> bool:
    return config_kind(path) == "serve"


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def one_item_dataset(folder: Path) -> Path:
    """A valid one-item dataset folder for SFT and GRPO (``--check`` parses it and looks for its images)."""
    from PIL import Image

    from trainer.dataset import item_entry, write_dataset

    Image.new("RGB", (8, 8)).save(folder / "dog.png")
    write_dataset(folder, [item_entry("a dog on a sofa", ["dog.png"], ["dog"], target_path="dog.png")])
    return folder


@pytest.mark.parametrize("path", [p for p in CONFIGS if is_server_config(p)], ids=lambda p: p.name)
@pytest.mark.parametrize("command", ["serve", "worker"])
def test_server_config_passes_check(capsys, path, command):
    code, out = run_cli(capsys, command, "--check", "--config", str(path))
    assert code == 0 and f"{path}: OK" in out, out


@pytest.mark.parametrize("path", [p for p in CONFIGS if config_kind(p) == "datagen"], ids=lambda p: p.name)
def test_datagen_config_is_valid(path):
    from trainer.datagen.config import DatagenConfig

    cfg = load_config(DatagenConfig, path)
    assert cfg.items > 0


@pytest.mark.parametrize("path", [p for p in CONFIGS if config_kind(p) == "train"], ids=lambda p: p.name)
def test_training_config_passes_check(capsys, path, tiny_config, tmp_path):
    data = yaml.safe_load(path.read_text())
    grpo = data.get("algorithm", "grpo") == "grpo"  # SFT needs no reward server
    fills = ["rewards.url=http://127.0.0.1:8000"] if grpo else []
    if str(data["model"]["path"]).startswith("REPLACE_WITH"):
        fills.append(f"model.path={tiny_config.parent / 'generator'}")
    if str(data["data"].get("file") or "").startswith("REPLACE_WITH"):
        fills.append(f"data.file={one_item_dataset(tmp_path)}")
    server = REPO / "configs" / PAIRS[path.name] if path.name in PAIRS else tiny_config
    argv = ["train", "--check", "--config", str(path), *(["--rewards-config", str(server)] if grpo else [])]
    code, out = run_cli(capsys, *argv, *(x for f in fills for x in ("--set", f)))
    assert code == 0 and f"{path}: OK" in out, out


@pytest.mark.parametrize("path", [p for p in CONFIGS if config_kind(p) == "train"], ids=lambda p: p.name)
def test_training_runs_land_in_the_repositorys_runs_folder(path):
    """run.output_dir written in a config starts at the config's folder: every shipped run writes under
    <repo>/runs (git-ignored), where the GRPO config's documented model.init_lora finds the SFT result."""
    from trainer.config import TrainConfig

    cfg = load_config(TrainConfig, path, ["data.file=x"])
    out = (path.parent / cfg.run.output_dir).resolve()
    assert out.parent == REPO / "runs", out
    if path.name == "psr_sft_kontext.yaml":  # what psr_flux_kontext.yaml and the README tell GRPO to start from
        steps = f"step-{cfg.run.steps:06d}"
        grpo = (REPO / "configs" / "psr_flux_kontext.yaml").read_text()
        assert f"model.init_lora={out.relative_to(REPO)}/checkpoints/{steps}" in grpo


def test_the_paper_sft_config_has_the_papers_settings():
    """README: configs/psr_sft_kontext.yaml is the paper's SFT (LoRA 512, lr 1e-4, 512 px, 2/3/4 references
    mixed 0.9 / 0.05 / 0.05), on FLUX.1 Kontext."""
    from trainer.config import TrainConfig

    cfg = load_config(TrainConfig, REPO / "configs" / "psr_sft_kontext.yaml", ["data.file=x"])
    assert (cfg.algorithm, cfg.model.path) == ("sft", "black-forest-labs/FLUX.1-Kontext-dev")
    assert (cfg.lora.rank, cfg.optim.lr, cfg.model.resolution) == (512, 1e-4, 512)
    assert cfg.data.reference_mix == {2: 0.9, 3: 0.05, 4: 0.05}


def test_the_paper_configs_use_one_set_of_reward_names():
    """rewards_psr.yaml hosts what the paper's training config weighs and psr bench score asks for."""
    hosted = set(load_config(ServerConfig, REPO / "configs" / "rewards_psr.yaml").rewards)
    train = yaml.safe_load((REPO / "configs" / "psr_flux_kontext.yaml").read_text())
    assert train["rewards"]["reward_weights"] == {"subject": 0.4, "judge": 0.4, "hpsv3": 0.2}
    assert set(train["rewards"]["required"]) <= hosted
    bench = {v for k, v in BenchConfig().rewards.model_dump().items() if v}
    assert bench <= hosted, bench - hosted
    spec = load_config(ServerConfig, REPO / "configs" / "rewards_psr.yaml").rewards
    assert (spec["hpsv3"].type, spec["subject"].type, spec["judge"].type) == ("hpsv3", "subject_consistency", "vlm_judge")
    assert spec["subject_paper"].options["paper_fallback"] is True


def test_pairing_a_training_config_with_the_wrong_server_config_fails(capsys, tmp_path):
    code, out = run_cli(capsys, "train", "--check", "--config", str(REPO / "configs" / "psr_flux_kontext.yaml"),
                        "--set", f"data.file={one_item_dataset(tmp_path)}", "--rewards-config", str(REPO / "configs" / "rewards_psr_light.yaml"))
    assert code == 2 and "rewards.reward_weights" in out and "hpsv3" in out


def test_compose_serves_a_shipped_config_that_passes_check(capsys):
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for service in ("front", "worker"):
        command = compose["services"][service]["command"]
        config = command[command.index("--config") + 1]
        volumes = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", v) for v in compose["services"][service]["volumes"]]
        mounts = [v.split(":")[0] for v in volumes if v.split(":")[1] == "/config"]
        assert mounts, f"{service} mounts no /config"
        folder = mounts[0]
        local = REPO / folder / Path(config).relative_to("/config")
        assert local.is_file(), f"{service} starts with {config}, which ./configs does not hold"
        code, out = run_cli(capsys, "serve" if service == "front" else "worker", "--check", "--config", str(local))
        assert code == 0, out


def test_the_example_env_file_carries_no_working_key():
    example = (REPO / "docker" / "psr.env.example").read_text()
    keys = next(line.split("=", 1)[1] for line in example.splitlines() if line.startswith("PSR_API_KEYS="))
    with pytest.raises(ConfigError, match="placeholder"):
        load_api_keys(keys)
    assert json.dumps(keys)  # it is there, as an example of the name:key form
