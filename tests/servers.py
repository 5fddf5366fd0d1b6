"""Start real ``psr serve`` processes for tests (uvicorn over real HTTP)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml

from reward_server.serving import free_port

REPO = Path(__file__).resolve().parents[1]


def repo_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses that run the repository's code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def psr_command(*args: str) -> list[str]:
    """The ``psr`` console command, run from this checkout."""
    return [sys.executable, "-m", "shared.cli", *args]


def missing_tool(message: str) -> None:
    """A system tool is missing: skip on a developer's machine, fail in CI (scripts/setup.sh installs it)."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_binary(name: str) -> str:
    """Path of a system tool the test needs (see ``missing_tool``)."""
    import shutil

    path = shutil.which(name)
    if path is None:
        missing_tool(f"{name} is not installed (scripts/setup.sh installs it)")
    return path


def write_config(path: Path, rewards: dict, **top: object) -> Path:
    path.write_text(yaml.safe_dump({"rewards": rewards, **top}))
    return path


def wait_for(
    condition, timeout: float = 10.0, what: str = "condition", proc: subprocess.Popen | None = None,
    every: float = 0.02,
):
    """Poll ``condition`` until it returns something truthy (returned); fail at the deadline, or
    at once (with its output) if ``proc`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"process exited with {proc.returncode} while waiting for {what}:\n{out}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def server_process(config: Path, *extra: str, env: dict[str, str] | None = None, ready: bool = True) -> Iterator[str]:
    """Run ``psr serve`` on a free port; yields its URL once ``/readyz`` is 200."""
    port = free_port()
    proc = subprocess.Popen(
        psr_command("serve", "--config", str(config), "--port", str(port), *extra),
        env=env or repo_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        if ready:
            wait_for(lambda: _ready(url), 120, f"{url}/readyz", proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
