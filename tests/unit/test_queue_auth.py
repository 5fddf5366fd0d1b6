"""API keys and per-caller limits."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from reward_server.auth import CURRENT_CALLER, ApiKeys, load_api_keys
from reward_server.limits import CallerLimiter, LimitedBackend, QueueFull
from shared.config import ConfigError

K1, K2 = "k" * 20, "z" * 32


def test_keys_come_from_the_environment_and_a_file(tmp_path, monkeypatch):
    path = tmp_path / "keys"
    path.write_text(f"# team keys\ntrainer:{K2}\n\n")
    monkeypatch.setenv("PSR_API_KEYS", f"alice:{K1}")
    monkeypatch.setenv("PSR_API_KEYS_FILE", str(path))
    assert load_api_keys() == {K1: "alice", K2: "trainer"}
    monkeypatch.delenv("PSR_API_KEYS")
    monkeypatch.delenv("PSR_API_KEYS_FILE")
    assert load_api_keys() == {}
    anonymous = load_api_keys(K1, None)
    assert list(anonymous) == [K1] and next(iter(anonymous.values())).startswith("key-")


def test_short_keys_and_missing_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="shorter than 16"):
        load_api_keys("short", None)
    with pytest.raises(ConfigError, match="does not exist"):
        load_api_keys("", tmp_path / "nope")


@pytest.mark.parametrize("header, caller", [
    (f"Bearer {K1}", "alice"), (f"bearer {K2}", "bob"), (None, None), ("", None), (K1, None),
    (f"Basic {K1}", None), ("Bearer ", None), (f"Bearer {K1}x", None), (f"Bearer {K1[:-1]}", None),
])
def test_bearer_tokens_are_checked(header, caller):
    assert ApiKeys({K1: "alice", K2: "bob"}).caller(header) == caller


def test_the_limiter_counts_samples_per_caller():
    limiter = CallerLimiter(max_samples=5, retry_after_s=2)
    limiter.reserve("a", 4)
    with pytest.raises(QueueFull, match="'a' already has 4 samples queued \\(limit 5\\)") as err:
        limiter.reserve("a", 2)
    assert err.value.retry_after_s == 2 and limiter.rejected == 1
    limiter.reserve("b", 5)  # callers do not share a quota
    limiter.release("a", 4)
    limiter.reserve("a", 50)  # alone, an oversized request still passes
    assert limiter.queued("a") == 50 and limiter.queued("b") == 5


def test_limited_backend_releases_on_failure_and_uses_the_current_caller():
    seen = []

    class Failing:
        async def run(self, request, samples, rewards):
            seen.append(limiter.queued("carol"))  # the request's samples, counted before running
            raise RuntimeError("model down")

    limiter = CallerLimiter(3)
    backend = LimitedBackend(Failing(), limiter)

    async def main():
        CURRENT_CALLER.set("carol")
        with pytest.raises(RuntimeError):
            await backend.run(SimpleNamespace(samples=[1, 2, 3]), [], ["x"])

    asyncio.run(main())
    assert seen == [3] and limiter.queued("carol") == 0
