"""A user's mistake on the command line: one message naming the file, key or option and the fix;
never a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from reward_server.serving import free_port
from shared.cli import main
from shared.client import HttpTransport, RetryableError


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors, or a message for the interpreter to print
        code = exc.code
    err = capsys.readouterr().err
    if isinstance(code, str):
        code, err = 1, err + code + "\n"
    assert "Traceback" not in err
    return code, err


@pytest.mark.parametrize("options, expected", [
    ({"mode": "cosin"}, r"rewards\.clip\.options\.mode: Input should be 'cosine', 'clipscore' or 'logit' \(got 'cosin'\)"),
    ({"mdoe": "cosine"}, r"rewards\.clip\.options\.mdoe: unknown key; valid keys here: mode, tokenizer"),
])
def test_a_bad_reward_option_names_the_file_the_reward_and_the_key(tmp_path, capsys, options, expected):
    config = tmp_path / "rewards.yaml"
    config.write_text(yaml.safe_dump({"rewards": {"clip": {"type": "clip_t", "model": "m", "options": options}}}))
    for command in (["serve", "--config", str(config)], ["worker", "--config", str(config), "--redis", "redis://h/0"]):
        code, err = _run(command, capsys)
        assert code == 2
        assert err.count("\n") == 1 and err.split(": ", 1)[1].startswith(f"{config}: "), err
        assert re.search(expected, err), err


def test_an_unknown_reward_type_names_the_file_and_the_key(tmp_path, capsys):
    config = tmp_path / "rewards.yaml"
    config.write_text(yaml.safe_dump({"rewards": {"clip": {"type": "clip_tt"}}}))
    code, err = _run(["serve", "--config", str(config)], capsys)
    assert code == 2 and f"{config}: rewards.clip.type: unknown reward type 'clip_tt'; known types:" in err


@pytest.mark.parametrize("argv", [
    ["score", "x.png", "-r", "clip_t", "--server", "127.0.0.1:8000"],
    ["bench", "score", "--data", "d", "--results", "r", "--out", "o", "--server", "127.0.0.1:8000"],
])
def test_a_server_url_without_a_scheme_says_how_to_write_it(argv, capsys):
    code, err = _run(argv, capsys)
    assert code == 2 and "'127.0.0.1:8000' needs a scheme: e.g. http://127.0.0.1:8000" in err
    prog = "psr bench score" if argv[0] == "bench" else "psr score"
    assert err.count("\n") == 1 and "usage:" not in err and f"(see {prog} --help)" in err, err


@pytest.mark.parametrize("size, hint", [("50", "use 48 or 64"), ("8", "use 16"), ("0", "at least 1")])
def test_bench_generate_refuses_a_bad_size_before_loading_anything(size, hint, capsys):
    code, err = _run(["bench", "generate", "--data", "d", "--model", "m", "--out", "o", "--size", size], capsys)
    assert code == 2 and f"--size: {size}" in err and hint in err
    assert err.startswith("psr bench generate: argument --size") and err.count("\n") == 1, err


def test_a_config_mistake_names_the_whole_subcommand(capsys):
    code, err = _run(["bench", "score", "--data", "no-such-folder", "--results", "r", "--out", "o"], capsys)
    assert code == 2 and err.startswith("psr bench score: "), err
    assert err == "psr bench score: no-such-folder: the benchmark folder does not exist\n", err


def test_a_missing_reference_is_called_a_reference(tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    code, err = _run(["score", str(image), "-r", "clip_t", "-s", "cat=nope.png"], capsys)
    assert code == 1 and "cannot read the reference image of subject 'cat' (--subject cat=nope.png)" in err


def test_an_unreachable_server_is_named():
    url = f"http://127.0.0.1:{free_port()}"
    transport = HttpTransport(url, None, timeout=2)
    with pytest.raises(RetryableError, match=f"cannot reach the reward service at {url}: .*refused"):
        transport.score({})
    with pytest.raises(RetryableError, match=f"at {url}"):
        transport.get("/v1/rewards")
    transport.close()


@pytest.mark.parametrize("argv", [
    ["worker", "--config", "rewards.yaml", "--redis", "127.0.0.1:6379/0"],
    ["serve", "--config", "rewards.yaml", "--redis", "127.0.0.1:6379/0"],
])
def test_a_redis_url_without_a_scheme_says_how_to_write_it(argv, capsys):
    code, err = _run(argv, capsys)
    assert code == 2 and "--redis: '127.0.0.1:6379/0' needs a scheme: e.g. redis://127.0.0.1:6379/0" in err, err


@pytest.mark.parametrize("device, reason", [("cuda:99", "cuda:99"), ("gpu0", "not a device name")])
def test_bench_generate_refuses_a_missing_or_misspelt_device_before_loading_anything(device, reason, capsys):
    code, err = _run(["bench", "generate", "--data", "d", "--model", "m", "--out", "o", "--device", device], capsys)
    assert code == 2 and f"--device: device {device!r}" in err and reason in err and "use auto, cpu" in err, err


def test_a_device_a_command_did_not_check_is_still_one_line(capsys, monkeypatch):
    """Whatever path reaches resolve_device with a GPU the machine lacks ends as one line, not a traceback."""
    import shared.cli
    from reward_server.models.device import resolve_device

    def func(_args):
        resolve_device("cuda:99")

    parser = shared.cli.build_parser()
    monkeypatch.setattr(shared.cli, "build_parser", lambda: parser)
    next(p for p in shared.cli.all_parsers(parser) if p.prog == "psr make-tiny").set_defaults(func=func)
    code, err = _run(["make-tiny", "d"], capsys)
    assert code == 2 and "psr make-tiny: device 'cuda:99'" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, option, hint", [
    (["demo", "--steps", "-1"], "--steps", "at least 1"),
    (["demo", "--recipe", "--items", "0"], "--items", "at least 1"),
    (["demo", "--recipe", "--sft-steps", "0"], "--sft-steps", "at least 1"),
    (["bench", "make-synthetic", "d", "--items", "0"], "--items", "at least 1"),
    (["serve", "--config", "r.yaml", "--port", "99999"], "--port", "0..65535"),
    (["worker", "--config", "r.yaml", "--redis", "redis://h/0", "--metrics-port", "70000"], "--metrics-port", "0..65535"),
])
def test_counts_and_ports_out_of_range_are_refused_before_any_work(argv, option, hint, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # were one accepted, the work it starts stays in here
    code, err = _run(argv, capsys)
    assert code == 2 and f"argument {option}:" in err and hint in err, err


def test_a_yaml_syntax_error_is_one_line_naming_the_file_and_line(tmp_path, capsys):
    config = tmp_path / "rewards.yaml"
    config.write_text("rewards:\n  clip_t:\n    type: clip_t\n   model: x\n")  # one space short
    code, err = _run(["serve", "--config", str(config)], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"{config}: not valid YAML at line 4, column 4: expected <block end>" in err and "unicode string" not in err, err


def test_a_set_value_that_is_not_yaml_names_the_key(capsys):
    config = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml"
    code, err = _run(["train", "--config", str(config), "--set", "data.prompts=[oops"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "--set data.prompts: '[oops' is not valid YAML" in err and "quote" in err, err
