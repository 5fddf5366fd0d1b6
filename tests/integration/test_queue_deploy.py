"""docker-compose.yml and the Dockerfiles: valid for Compose, and their commands are real CLI commands."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from shared.cli import build_parser
from tests.servers import missing_tool

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
KEY = "trainer:" + "k" * 32


def _compose_command() -> list[str] | None:
    """``docker compose`` (v2 plugin) or ``docker-compose`` (v1), whichever works here."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _dockerfile_cmd(name: str) -> list[str]:
    text = (REPO / "docker" / name).read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    return entry + cmd


@pytest.fixture(scope="module")
def compose_config(tmp_path_factory) -> dict:
    command = _compose_command()
    if command is None:
        missing_tool("neither `docker compose` nor `docker-compose` is installed (scripts/setup.sh installs it)")
    env = tmp_path_factory.mktemp("compose") / "test.env"
    env.write_text(f"PSR_API_KEYS={KEY}\n")
    out = subprocess.run([*command, "--env-file", str(env), "-f", str(COMPOSE), "config"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_compose_validates_with_gpu_workers_health_checks_and_the_key_from_the_env_file(compose_config):
    services = compose_config["services"]
    assert set(services) == {"redis", "front", "worker"}
    assert services["front"]["environment"]["PSR_API_KEYS"] == KEY
    [gpu] = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["capabilities"] == ["gpu"] and gpu["count"] == 1
    assert all("healthcheck" in s for s in services.values())
    assert "ports" not in services["redis"] and "ports" not in services["worker"]  # Redis stays private
    assert "container_name" not in services["worker"]  # or `--scale worker=4` would clash


def test_compose_refuses_to_start_without_an_api_key(tmp_path):
    command = _compose_command()
    if command is None:
        missing_tool("neither `docker compose` nor `docker-compose` is installed (scripts/setup.sh installs it)")
    empty = tmp_path / "empty.env"
    empty.write_text("")
    out = subprocess.run([*command, "--env-file", str(empty), "-f", str(COMPOSE), "config"],
                         capture_output=True, text=True, cwd=REPO, env={"PATH": "/usr/bin:/bin:/usr/local/bin"})
    assert out.returncode != 0 and "PSR_API_KEYS" in out.stderr


@pytest.mark.parametrize("service, dockerfile", [("front", "front.Dockerfile"), ("worker", "worker.Dockerfile")])
def test_images_run_the_same_cli_commands_the_tests_run(service, dockerfile):
    compose = yaml.safe_load(COMPOSE.read_text())
    command = compose["services"][service]["command"]
    assert _dockerfile_cmd(dockerfile) == ["psr", *command]
    args = build_parser().parse_args(command)  # the flags exist and parse: same entry point as the tests
    assert args.command == {"front": "serve", "worker": "worker"}[service]
    assert args.redis == "redis://redis:6379/0"


def test_trainer_image_runs_the_psr_entry_point():
    assert _dockerfile_cmd("trainer.Dockerfile")[0] == "psr"
