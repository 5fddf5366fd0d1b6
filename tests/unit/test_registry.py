"""The reward registry fails loudly: duplicates, unknown names, broken modules, bad classes."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

import reward_server.rewards as rewards_pkg
from reward_server.config import RewardSpec, ServerConfig
from reward_server.registry import build_rewards, load_rewards
from reward_server.rewards import (
    Reward,
    RewardImportError,
    ScoreResult,
    get_reward_type,
    register,
    reward_types,
)
from reward_server.rewards.synthetic import BrightnessReward
from shared.config import ConfigError


class NotAReward:
    """Importable, but not a reward."""


class BrokenLoad(Reward):
    type_name = "broken_load_for_tests"

    def load(self) -> None:
        raise OSError("weights file is missing")

    def score(self, samples: Sequence) -> list[ScoreResult]:
        return []


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A copy of the registry that the test may dirty."""
    types = dict(reward_types())
    monkeypatch.setattr(rewards_pkg, "_TYPES", types)
    return types


def make_type(name: str) -> type[Reward]:
    return type(f"R_{name}", (BrokenLoad,), {"type_name": name})


def test_builtin_types_are_discovered() -> None:
    assert {"brightness", "color", "fixed_cost", "clip_t", "aesthetic", "image_similarity"} <= set(
        reward_types()
    )


def test_duplicate_type_name_raises(clean_registry: dict) -> None:
    first = register(make_type("dup_for_tests"))
    assert register(first) is first  # registering the same class again is harmless
    with pytest.raises(RewardImportError, match="registered twice"):
        register(make_type("dup_for_tests"))


def test_class_without_type_name_raises(clean_registry: dict) -> None:
    with pytest.raises(RewardImportError, match="no type_name"):
        register(type("Nameless", (BrokenLoad,), {"type_name": ""}))


def test_unknown_type_lists_the_valid_ones() -> None:
    with pytest.raises(RewardImportError, match="unknown reward type 'clipt'") as info:
        get_reward_type("clipt")
    assert "clip_t" in str(info.value) and "brightness" in str(info.value)


def test_module_colon_class_form() -> None:
    assert get_reward_type("reward_server.rewards.synthetic:BrightnessReward") is BrightnessReward
    with pytest.raises(RewardImportError, match="not a Reward subclass"):
        get_reward_type(f"{__name__}:NotAReward")
    with pytest.raises(RewardImportError, match="cannot import"):
        get_reward_type("no_such_package.mod:Thing")
    with pytest.raises(RewardImportError, match="cannot import"):
        get_reward_type(f"{__name__}:Missing")


def test_a_module_that_fails_to_import_stops_discovery(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clean_registry: dict
) -> None:
    (tmp_path / "good_for_tests.py").write_text("X = 1\n")
    (tmp_path / "broken_for_tests.py").write_text("import package_that_does_not_exist\n")
    monkeypatch.setattr(rewards_pkg, "__path__", [str(tmp_path)])
    monkeypatch.setattr(rewards_pkg, "_discovered", False)
    for name in ("good_for_tests", "broken_for_tests"):
        monkeypatch.delitem(sys.modules, f"reward_server.rewards.{name}", raising=False)
    try:
        with pytest.raises(
            RewardImportError, match=r"reward_server\.rewards\.broken_for_tests failed to import"
        ):
            reward_types()
        assert rewards_pkg._discovered is False  # not marked as done: the next call fails again
    finally:
        for name in ("good_for_tests", "broken_for_tests"):
            sys.modules.pop(f"reward_server.rewards.{name}", None)


def test_build_rewards_only_and_unknown_names() -> None:
    config = ServerConfig(rewards={"b": RewardSpec(type="brightness"), "r": RewardSpec(type="color")})
    assert list(build_rewards(config, only=["r"])) == ["r"]
    with pytest.raises(ConfigError, match="configured: b, r"):
        build_rewards(config, only=["nope"])


def test_bad_options_fail_when_built() -> None:
    config = ServerConfig(rewards={"r": RewardSpec(type="color", options={"colour": [1, 2, 3]})})
    with pytest.raises(ValueError, match="colour"):
        build_rewards(config)


def test_load_failure_names_the_reward() -> None:
    reward = BrokenLoad("my_reward", RewardSpec(type="broken_load_for_tests"))
    with pytest.raises(RuntimeError, match="'my_reward' failed to load: weights file is missing"):
        load_rewards({"my_reward": reward})
    assert not reward.loaded
