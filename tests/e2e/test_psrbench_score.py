"""``psr bench score`` end to end: a real ``psr serve`` on tiny models, the CLI as users run it."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.servers import REPO, psr_command, repo_env, server_process
from trainer.evaluation.radar import radar_size

pytestmark = pytest.mark.slow

# Dimension -> served reward. Until the subject rewards land, tiny stand-ins: DINO-I / CLIP-I for
# the two SC protocols, a judge stand-in that fails on "jumping" (the Action subset) and the
# brightness rule for Position, so routing and failure reporting are visible in the outputs.
DIMENSIONS = ["rewards.sc=dino_i", "rewards.sc_paper=clip_i", "rewards.sa=judge",
              "rewards.sa_position=brightness", "rewards.aesthetics=aesthetic", "batch_size=3"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(psr_command(*args), cwd=REPO, env=repo_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def server(tiny_config: Path, tmp_path_factory) -> str:
    rewards = yaml.safe_load(tiny_config.read_text())["rewards"]
    hosted = {n: rewards[n] for n in ("dino_i", "clip_i", "aesthetic", "brightness")}
    hosted["judge"] = {"type": "fixed_cost", "options": {"error_on": "jumping"}}
    config = tmp_path_factory.mktemp("bench-server") / "rewards.yaml"
    config.write_text(yaml.safe_dump({"rewards": hosted}))
    with server_process(config) as url:
        yield url


def score(bench: Path, out: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    sets = [a for s in DIMENSIONS for a in ("--set", s)]
    return run("bench", "score", "--data", str(bench), "--results", str(bench / "results" / "results.json"),
               "--server", url, "--out", str(out), "--no-progress", *sets, *extra)


def test_score_synthetic_set_through_a_real_server(server, tmp_path):
    bench = tmp_path / "bench"
    made = run("bench", "make-synthetic", str(bench), "--items", "2", "--size", "48")
    assert made.returncode == 0, made.stderr
    out = tmp_path / "scored"

    first = score(bench, out, server, "--subsets", "Attribute,Action,Position", "--label", "first")
    assert first.returncode == 0, first.stderr
    (tmp_path / "first.json").write_text((out / "summary.json").read_text())

    full = score(bench, out, server, "--compare", str(tmp_path / "first.json"), "--label", "tiny")
    assert full.returncode == 0, full.stderr
    lines = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in lines) == sorted({r["key"] for r in lines})  # resumed: none scored twice
    assert len(lines) == 14
    recs = {r["key"]: r for r in lines}

    for key, rec in recs.items():
        assert rec["rewards"]["sa"] == ("brightness" if key.startswith("Position/") else "judge")
        assert rec["rewards"]["sc"] == "dino_i" and rec["versions"]["sc"].startswith("image_similarity/")
        image = np.asarray(Image.open(rec["result_path"]).convert("RGB"))
        if key.startswith("Position/"):  # the box-rule slot got the served brightness of this very image
            assert rec["scores"]["sa"] == pytest.approx(image.mean() / 255.0, abs=1e-6)
        assert len(rec["details"]["sc"]["per_reference"]) == {"Three": 3, "Four": 4}.get(rec["subset"], 2)
    for key in ("Action/0000", "Action/0001"):
        assert recs[key]["scores"]["sa"] is None
        assert recs[key]["errors"] == {"sa": "fixed_cost was told to fail on 'jumping'"}

    table = list(csv.DictReader((out / "table.csv").open()))
    assert [r["subset"] for r in table] == ["Attribute", "Action", "Background", "Position", "Complex",
                                            "Three", "Four", "Overall"]
    action, overall = table[1], table[-1]
    assert (action["sa_mean"], action["sa_scored"], action["sa_failed"]) == ("", "0", "2")
    sa_scored = [r["scores"]["sa"] for r in lines if r["scores"]["sa"] is not None]
    assert float(overall["sa_mean"]) == pytest.approx(np.mean(sa_scored), abs=1e-5)
    assert overall["sa_scored"] == "12" and overall["sc_scored"] == "14"
    markdown = (out / "table.md").read_text()
    assert "| Action     |     2 |" in markdown and "SA 2" in markdown and "'jumping'" in markdown
    assert "| Overall" in full.stdout
    with Image.open(out / "radar.png") as img:
        assert img.size == radar_size(4)

    again = score(bench, out, server)
    assert again.returncode == 0 and (out / "scores.jsonl").read_text().count("\n") == 14


def test_unhosted_reward_and_unreachable_server_are_clear_errors(server, tmp_path):
    bench = tmp_path / "bench"
    assert run("bench", "make-synthetic", str(bench), "--items", "1", "--size", "32").returncode == 0
    missing = run("bench", "score", "--data", str(bench), "--results", str(bench / "results"),
                  "--server", server, "--out", str(tmp_path / "o1"), "--no-progress")
    assert missing.returncode == 2
    assert "does not host" in missing.stderr and "'subject'" in missing.stderr
    down = score(bench, tmp_path / "o2", "http://127.0.0.1:9", "--set", "connect_timeout_s=0.5")
    assert down.returncode == 1 and "reward service http://127.0.0.1:9" in down.stderr
    assert "Traceback" not in missing.stderr + down.stderr
