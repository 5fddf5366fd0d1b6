"""`psr worker` argument handling (the serving loop itself is covered by the e2e tests)."""

from __future__ import annotations

import yaml

from shared.cli import build_parser, main


def _config(tmp_path):
    path = tmp_path / "rewards.yaml"
    path.write_text(yaml.safe_dump({"rewards": {"bright": {"type": "brightness"}}}))
    return path


def test_worker_needs_a_redis_url(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PSR_REDIS_URL", raising=False)
    assert main(["worker", "--config", str(_config(tmp_path))]) == 2
    assert "--redis" in capsys.readouterr().err


def test_worker_names_unknown_rewards_and_bad_configs(tmp_path, capsys):
    url = "redis://127.0.0.1:1/0"
    assert main(["worker", "--config", str(_config(tmp_path)), "--redis", url, "--rewards", "nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "configured: bright" in err
    assert main(["worker", "--config", str(tmp_path / "missing.yaml"), "--redis", url]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["worker", "--config", str(_config(tmp_path)), "--redis", url, "--set", "queue.max_attempts=0"]) == 2
    assert "max_attempts" in capsys.readouterr().err


def test_worker_flags_parse(monkeypatch):
    monkeypatch.setenv("PSR_REDIS_URL", "rediss://:pw@redis:6380/1")
    args = build_parser().parse_args(["worker", "--config", "c.yaml", "--device", "cuda:1", "--rewards", "a,b"])
    assert args.redis == "rediss://:pw@redis:6380/1" and args.device == "cuda:1" and args.rewards == "a,b"
