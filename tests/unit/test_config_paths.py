"""Paths and user mistakes in configs: one rule for relative paths, missing paths and GPUs reported
at once in one line (file, key, fix), placeholders refused, and the pre-flight reward check."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import yaml

from reward_server.config import ServerConfig
from reward_server.registry import build_rewards, check_rewards, load_rewards
from shared.cli import main
from shared.config import ConfigError, load_config
from shared.paths import MissingPathError, looks_local, resolve_path
from trainer.config import TrainConfig
from trainer.preflight import check_hosted_rewards, resolve_paths
from trainer.scoring import RewardRequestRefused

REPO = Path(__file__).resolve().parents[2]
TINY_CPU = REPO / "configs" / "tiny_cpu.yaml"
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def one_line_error(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


@pytest.mark.parametrize(("value", "local"), [
    ("openai/clip-vit-large-patch14", False), ("gpt2", False), ("/abs/dir", True), ("./rel", True),
    ("../up/x", True), ("~/ckpt", True), ("a/b/c", True), ("hps.pt", True), ("HPSv3.safetensors", True),
])
def test_local_or_hub(value, local):
    assert looks_local(value, Path("/nonexistent")) is local


def test_make_tiny_writes_absolute_paths(tmp_path, monkeypatch):
    """`psr make-tiny models` used to write `models/...`, which broke from any other folder."""
    import reward_server.tiny as tiny

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tiny, "writer_modules", lambda: ["reward_server.tiny.preference"])
    config = yaml.safe_load(tiny.make_tiny("models").read_text())
    paths = [config["rewards"]["hpsv2"]["model"], config["rewards"]["hpsv2"]["options"]["model_config_dir"],
             config["rewards"]["pickscore"]["model"]]
    assert all(Path(p).is_absolute() and str(p).startswith(str(tmp_path)) for p in paths), paths


def test_missing_local_model_is_reported_at_once_naming_file_and_key(tmp_path):
    """Before: a missing relative checkpoint folder went to the hub (~50 s) and came back as a network error."""
    path = tmp_path / "rewards.yaml"
    path.write_text(yaml.safe_dump({"rewards": {"clip_t": {"type": "clip_t", "model": "./checkpoints/clip"}}}))
    rewards = build_rewards(load_config(ServerConfig, path))
    with pytest.raises(MissingPathError) as err:
        load_rewards(rewards)
    message = str(err.value)
    assert str(path) in message and "rewards.clip_t.model" in message and "does not exist" in message


def test_missing_nested_option_path_is_reported(tmp_path):
    path = tmp_path / "rewards.yaml"
    spec = {"type": "subject_consistency", "options": {"detector": {"kind": "grounding_dino", "model": "/no/such/gd"}}}
    path.write_text(yaml.safe_dump({"rewards": {"subject": spec}}))
    with pytest.raises(MissingPathError, match=r"rewards\.subject\.options\.detector\.model: local path /no/such/gd"):
        load_rewards(build_rewards(load_config(ServerConfig, path)))


def test_reward_paths_start_at_the_config_folder_and_set_values_at_cwd(tmp_path, monkeypatch):
    folder, elsewhere = tmp_path / "cfg", tmp_path / "elsewhere"
    (folder / "ckpt").mkdir(parents=True)
    (elsewhere / "ckpt").mkdir(parents=True)
    path = folder / "rewards.yaml"
    path.write_text(yaml.safe_dump({"rewards": {"c": {"type": "clip_t", "model": "ckpt"},
                                                "d": {"type": "clip_t", "model": "openai/clip-vit-base-patch32"}}}))
    monkeypatch.chdir(elsewhere)
    rewards = build_rewards(load_config(ServerConfig, path))
    assert rewards["c"].spec.model == str(folder / "ckpt")
    assert rewards["d"].spec.model == "openai/clip-vit-base-patch32"  # a hub id stays one
    rewards = build_rewards(load_config(ServerConfig, path, ["rewards.c.model=./ckpt"]))
    assert rewards["c"].spec.model == str(elsewhere / "ckpt")


def test_train_paths_follow_one_rule(tmp_path, monkeypatch):
    """Before: data.file started at the config's folder, model.path and run.output_dir at cwd."""
    folder = tmp_path / "cfg"
    (folder / "gen").mkdir(parents=True)
    (folder / "data.json").write_text("[]")
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"path": "./gen"}, "data": {"file": "data.json"}, "run": {"output_dir": "out"},
        "rewards": {"reward_weights": {"brightness": 1.0}},
    }))
    monkeypatch.chdir(tmp_path)
    cfg = resolve_paths(load_config(TrainConfig, path))
    assert (cfg.model.path, cfg.data.file, cfg.run.output_dir) == (
        str(folder / "gen"), str(folder / "data.json"), str(folder / "out"))
    cfg = resolve_paths(load_config(TrainConfig, path, ["run.output_dir=runs/x", "model.path=org/model"]))
    assert cfg.run.output_dir == str(tmp_path / "runs" / "x") and cfg.model.path == "org/model"
    assert resolve_path("runs/x", tmp_path, always_local=True) == str(tmp_path / "runs" / "x")


def test_train_with_the_placeholder_model_path_is_one_line(capsys):
    code, out = run_cli(capsys, "train", "--config", str(TINY_CPU), "--set", "rewards.url=http://127.0.0.1:9")
    line = one_line_error(out)
    assert code == 2 and str(TINY_CPU) in line and "model.path" in line and "REPLACE_WITH" in line and "--set model.path=" in line


def test_train_with_a_missing_model_path_is_one_line(capsys, tmp_path):
    missing = tmp_path / "generator"
    code, out = run_cli(capsys, "train", "--config", str(TINY_CPU), "--set", f"model.path={missing}",
                        "--set", "rewards.url=http://127.0.0.1:9")
    line = one_line_error(out)
    assert code == 2 and "model.path" in line and str(missing) in line and "does not exist" in line


@no_gpu
def test_worker_on_a_missing_gpu_is_one_line(capsys, tiny_config):
    code, out = run_cli(capsys, "worker", "--config", str(tiny_config), "--redis", "redis://127.0.0.1:9/0",
                        "--device", "cuda:0", "--rewards", "brightness")
    line = one_line_error(out)
    assert code == 2 and "--device cuda:0" in line and "CUDA is not available" in line and "--device cpu" in line


@no_gpu
def test_serve_with_a_cuda_device_and_no_gpu_is_one_line(capsys, tiny_config):
    code, out = run_cli(capsys, "serve", "--config", str(tiny_config), "--rewards", "brightness",
                        "--set", "rewards.brightness.device=cuda:0")
    line = one_line_error(out)
    assert code == 2 and "--set rewards.brightness.device" in line and "auto or cpu" in line


def test_placeholder_api_keys_are_refused(monkeypatch):
    from reward_server.auth import load_api_keys

    example = (REPO / "docker" / "psr.env.example").read_text()
    keys = next(line.split("=", 1)[1] for line in example.splitlines() if line.startswith("PSR_API_KEYS="))
    with pytest.raises(ConfigError, match="placeholder"):
        load_api_keys(keys)
    assert load_api_keys("trainer:Zk3v9Qp2LmX7wT4rY8sB1nE6") == {"Zk3v9Qp2LmX7wT4rY8sB1nE6": "trainer"}


class _Lister:
    def __init__(self, names):
        self.names = names

    def rewards(self):
        return [{"name": n} for n in self.names]


def test_preflight_names_rewards_the_server_lacks():
    cfg = load_config(TrainConfig, TINY_CPU, ["model.path=x", "rewards.url=http://h:1",
                                               "rewards.reward_weights={brightness: 1, hpsv3: 0.5}"])
    check_hosted_rewards(_Lister(["brightness", "hpsv3", "judge"]), cfg)
    with pytest.raises(RewardRequestRefused, match=r"\['hpsv3'\].*http://h:1 hosts only \['brightness'\]"):
        check_hosted_rewards(_Lister(["brightness"]), cfg)


def test_trainer_checks_the_server_before_loading_the_generator(monkeypatch):
    import trainer.run
    import trainer.train as train

    def no_generator(*_a, **_k):
        raise AssertionError("the generator was loaded before the reward check")

    monkeypatch.setattr(trainer.run, "build_policy", no_generator)
    cfg = load_config(TrainConfig, TINY_CPU, ["model.path=x", "rewards.url=http://h:1"])
    with pytest.raises(RewardRequestRefused, match="brightness"):
        train.FlowGRPOTrainer(cfg, _Lister(["judge"]))


class _Down:
    """A reward service nobody started: every call is a connection error."""

    def rewards(self):
        from shared.client import RetryableError

        raise RetryableError("cannot reach the reward service at http://h:1: [Errno 111] Connection refused")


def test_a_server_that_never_answers_is_reported_after_connect_timeout_not_ready_timeout(caplog):
    """psr train against a server nobody started waited rewards.ready_timeout_s (600 s) without a word."""
    cfg = load_config(TrainConfig, TINY_CPU, ["model.path=x", "rewards.url=http://h:1", "rewards.connect_timeout_s=0.2"])
    assert cfg.rewards.ready_timeout_s == 600
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="trainer"), pytest.raises(
            RewardRequestRefused, match=r"http://h:1.*Connection refused.*rewards\.connect_timeout_s = 0\.2 s.*psr serve"):
        check_hosted_rewards(_Down(), cfg)
    assert time.monotonic() - started < 5
    assert "waiting up to rewards.connect_timeout_s = 0.2 s for the reward service at http://h:1" in caplog.text


def test_a_missing_resume_checkpoint_is_reported_before_the_server_is_asked(tmp_path):
    import trainer.train as train

    cfg = load_config(TrainConfig, TINY_CPU, ["model.path=x", "rewards.url=http://h:1"])
    with pytest.raises(ConfigError, match=r"--resume .*nockpt: no such checkpoint folder"):
        train.run_training(cfg, _Down(), resume=tmp_path / "nockpt")


def test_missing_generator_folder_is_reported_as_missing():
    """psr bench generate / psr train: a missing local generator is not retried as a hub id."""
    from trainer.pipeline import MultiRefGenerator

    with pytest.raises(MissingPathError, match=r"generator: local path \./no/generator does not exist"):
        MultiRefGenerator.from_pretrained("./no/generator")


@no_gpu
def test_train_on_a_missing_gpu_is_one_line(capsys, tiny_config):
    code, out = run_cli(capsys, "train", "--check", "--config", str(TINY_CPU), "--set", "model.device=cuda",
                        "--set", f"model.path={tiny_config.parent / 'generator'}", "--set", "rewards.url=http://h:1")
    line = one_line_error(out)
    assert code == 2 and "model.device" in line and "CUDA is not available" in line


def test_aesthetic_head_follows_the_path_rule(tmp_path, monkeypatch, tiny_server_config):
    """Before: a relative options.head was opened from the working directory (not the config's folder)
    and a missing one passed --check, failing only when the model loaded."""
    import shutil

    tiny = tiny_server_config.rewards["aesthetic"]
    folder, elsewhere = tmp_path / "cfg", tmp_path / "elsewhere"
    (folder / "heads").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(tiny.options["head"], folder / "heads" / "h.safetensors")
    shutil.copytree(tiny.model, folder / "clip")
    shutil.copy(tiny.options["head"], folder / "clip" / "inside.safetensors")
    path = folder / "rewards.yaml"
    path.write_text(yaml.safe_dump({"rewards": {
        "a": {"type": "aesthetic", "model": tiny.model, "options": {"head": "heads/h.safetensors"}},
        "b": {"type": "aesthetic", "model": "./clip", "options": {"head": "inside.safetensors"}},  # inside the model
        "c": {"type": "aesthetic", "model": tiny.model, "options": {"head": "heads/typo.safetensors"}},
    }}))
    monkeypatch.chdir(elsewhere)
    rewards = build_rewards(load_config(ServerConfig, path))
    assert rewards["a"].options.head == str(folder / "heads" / "h.safetensors")
    assert rewards["b"].options.head == str(folder / "clip" / "inside.safetensors")
    check_rewards({"a": rewards["a"], "b": rewards["b"]})
    with pytest.raises(MissingPathError, match=r"rewards\.c\.options\.head: local path .*cfg/heads/typo\.safetensors"):
        check_rewards({"c": rewards["c"]})


PAPER = REPO / "configs" / "psr_flux_kontext.yaml"


def test_a_set_value_is_named_as_given_on_the_command_line(capsys, tmp_path):
    """Before: '.../psr_flux_kontext.yaml: data.file: ... does not exist' for a value the user typed with --set."""
    code, out = run_cli(capsys, "train", "--check", "--config", str(PAPER), "--set", f"data.file={tmp_path}/nope")
    line = one_line_error(out)
    assert code == 2 and line.startswith("psr train: --set data.file:") and str(PAPER) not in line


def test_train_check_refuses_a_device_name_that_is_not_one(capsys, tmp_path):
    """Before: only cuda* devices were checked, so model.device=gpu passed --check."""
    code, out = run_cli(capsys, "train", "--check", "--config", str(PAPER), "--set", "model.device=gpu",
                        "--set", "data.prompts=[{prompt: a dog}]", "--set", "data.file=null")
    line = one_line_error(out)
    assert code == 2 and "--set model.device" in line and "not a device name" in line


def test_train_check_reads_the_dataset_and_finds_its_missing_images(capsys, tmp_path):
    """Before: --check only saw that data.file existed; a dataset naming a missing image passed."""
    (tmp_path / "dataset.json").write_text('[{"instruction": "a dog", "input_path": ["gone.png"], "category1": "dog"}]')
    code, out = run_cli(capsys, "train", "--check", "--config", str(PAPER), "--set", f"data.file={tmp_path}")
    assert code == 2 and "gone.png" in out and "Traceback" not in out, out


def test_inline_references_follow_the_path_rule_and_are_checked(capsys, tmp_path, monkeypatch):
    from PIL import Image

    folder, elsewhere = tmp_path / "cfg", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "dog.png")
    Image.new("RGB", (8, 8)).save(elsewhere / "cat.png")
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"path": "org/model"}, "rewards": {"url": "http://h:1", "reward_weights": {"brightness": 1.0}},
        "data": {"prompts": [{"prompt": "a dog", "references": ["dog.png", "solid:1,2,3"]}]},
    }))
    monkeypatch.chdir(elsewhere)
    cfg = resolve_paths(load_config(TrainConfig, path))
    assert cfg.data.prompts[0].references == [str(folder / "dog.png"), "solid:1,2,3"]
    cfg = resolve_paths(load_config(TrainConfig, path, ["data.prompts=[{prompt: a cat, references: [cat.png]}]"]))
    assert cfg.data.prompts[0].references == [str(elsewhere / "cat.png")]  # --set: from the current folder
    code, out = run_cli(capsys, "train", "--check", "--config", str(path),
                        "--set", "data.prompts=[{prompt: a cat, references: [kat.png]}]")
    line = one_line_error(out)
    assert code == 2 and "--set data.prompts.0: references[0]" in line and str(elsewhere / "kat.png") in line


def test_check_finds_an_unset_endpoint_key_variable(tmp_path, monkeypatch):
    """Before: --check passed a judge whose api_key_env was not set; the worker failed when loading it."""
    monkeypatch.delenv("PSR_TEST_JUDGE_KEY", raising=False)
    path = tmp_path / "rewards.yaml"
    path.write_text(yaml.safe_dump({"rewards": {"judge": {"type": "vlm_judge", "model": "Qwen/Qwen2.5-VL-7B-Instruct",
        "options": {"backend": "openai", "endpoint": "http://127.0.0.1:9/v1", "api_key_env": "PSR_TEST_JUDGE_KEY"}}}}))
    rewards = build_rewards(load_config(ServerConfig, path))
    with pytest.raises(ConfigError, match=r"rewards\.judge\.options\.api_key_env: .*PSR_TEST_JUDGE_KEY.* is not set"):
        check_rewards(rewards)
    monkeypatch.setenv("PSR_TEST_JUDGE_KEY", "k" * 24)
    check_rewards(rewards)
