"""API keys: one way for every client (PSR_API_KEY or PSR_API_KEY_FILE), placeholders refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reward_server.auth import load_api_keys
from shared.api_keys import ApiKeyError, client_api_key, is_placeholder
from shared.cli import main
from shared.client import AsyncRewardClient, RewardClient
from shared.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
KEY = "Zq3" + "k" * 29


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch):
    for name in ("PSR_API_KEY", "PSR_API_KEY_FILE", "PSR_API_KEYS", "PSR_API_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)


def test_client_key_from_the_environment_or_a_file(monkeypatch, tmp_path):
    assert client_api_key({}) is None
    assert client_api_key({"PSR_API_KEY": KEY}) == KEY
    assert client_api_key({"PSR_API_KEY": f"trainer:{KEY}"}) == KEY  # the server's `name:key` line works too
    path = tmp_path / "key"
    path.write_text(f"# my key\ntrainer:{KEY}\n")
    assert client_api_key({"PSR_API_KEY_FILE": str(path)}) == KEY
    with pytest.raises(ApiKeyError, match="both"):
        client_api_key({"PSR_API_KEY": KEY, "PSR_API_KEY_FILE": str(path)})
    with pytest.raises(ApiKeyError, match="does not exist"):
        client_api_key({"PSR_API_KEY_FILE": str(tmp_path / "nope")})
    with pytest.raises(ApiKeyError, match="shorter than 16"):
        client_api_key({"PSR_API_KEY": "short"})


def test_every_client_sends_the_environment_key(monkeypatch):
    monkeypatch.setenv("PSR_API_KEY", f"trainer:{KEY}")
    with RewardClient("http://127.0.0.1:1") as client:
        assert client.transport._client.headers["authorization"] == f"Bearer {KEY}"
    async_client = AsyncRewardClient("http://127.0.0.1:1")
    assert async_client._client.headers["authorization"] == f"Bearer {KEY}"

    from trainer.config import TrainConfig
    from trainer.train import make_reward_client

    cfg = load_config(TrainConfig, REPO / "configs" / "tiny_cpu.yaml", ["rewards.url=http://127.0.0.1:1"])
    client = make_reward_client(cfg)
    assert client.transport._client.headers["authorization"] == f"Bearer {KEY}"
    client.close()


def test_keys_on_the_command_line_are_refused_with_where_to_put_them(capsys, tmp_path):
    for argv in (["score", "x.png", "-r", "a", "--api-key", KEY],
                 ["bench", "score", "--data", "d", "--results", "r", "--out", "o", "--api-key", KEY]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "PSR_API_KEY" in capsys.readouterr().err
    from trainer.config import TrainConfig

    with pytest.raises(ConfigError, match=r"--set rewards.api_key: .*PSR_API_KEY"):
        load_config(TrainConfig, REPO / "configs" / "tiny_cpu.yaml", [f"rewards.api_key={KEY}"])


def _documented_keys() -> list[str]:
    """Every key value our docs and examples show for PSR_API_KEY(S)."""
    found = []
    for path in [REPO / "README.md", *sorted((REPO / "docker").glob("*")), REPO / "docker-compose.yml"]:
        for match in re.finditer(r"PSR_API_KEYS?=[\"']?([^\s\"'$]+)", path.read_text()):
            if not match.group(1).endswith(":"):  # `name:$(python -c ...)` generates its key
                found.append(match.group(1))
    return found


def test_placeholder_keys_from_our_examples_are_refused_by_server_and_client():
    keys = _documented_keys()
    assert "trainer:change-me-to-a-long-random-key" in keys  # the docker example is scanned
    for entry in keys:
        with pytest.raises(ConfigError, match="placeholder"):
            load_api_keys(entry, None)
        with pytest.raises(ApiKeyError, match="placeholder"):
            client_api_key({"PSR_API_KEY": entry})
    assert not is_placeholder("Zq3kT0m9" * 4)


def test_a_placeholder_stops_the_server_before_it_listens(tmp_path, monkeypatch, capsys):
    config = tmp_path / "rewards.yaml"
    config.write_text("rewards: {b: {type: brightness}}\n")
    monkeypatch.setenv("PSR_API_KEYS", "trainer:change-me-to-a-long-random-key")
    assert main(["serve", "--config", str(config), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "placeholder" in err and "PSR_API_KEYS" in err and "Traceback" not in err
