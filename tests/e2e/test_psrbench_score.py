"""``psr bench score`` end to end: a real ``psr serve`` on the tiny models of ``psr make-tiny``."""

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


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(psr_command(*args), cwd=REPO, env=repo_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def server(tiny_config: Path, tmp_path_factory) -> str:
    """``psr make-tiny``'s subject, subject_paper, judge, position and HPSv3 rewards (the default
    dimension names), and a judge stand-in that fails on "jumping"."""
    rewards = yaml.safe_load(tiny_config.read_text())["rewards"]
    hosted = {n: rewards[n] for n in ("subject", "subject_paper", "judge", "position", "hpsv3")}
    assert hosted["subject_paper"]["options"]["paper_fallback"] is True
    hosted["flaky_judge"] = {"type": "fixed_cost", "options": {"error_on": "jumping"}}
    config = tmp_path_factory.mktemp("bench-server") / "rewards.yaml"
    config.write_text(yaml.safe_dump({"rewards": hosted}))
    with server_process(config) as url:
        yield url


def score(bench: Path, out: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    return run("bench", "score", "--data", str(bench), "--results", str(bench / "results" / "results.json"),
               "--server", url, "--out", str(out), "--no-progress", "--set", "batch_size=3", *extra)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("psrbench") / "bench"
    made = run("bench", "make-synthetic", str(root), "--items", "2", "--size", "48")
    assert made.returncode == 0, made.stderr
    return root


def test_score_synthetic_set_through_a_real_server(server, bench, tmp_path):
    out = tmp_path / "scored"
    first = score(bench, out, server, "--subsets", "Attribute,Position", "--label", "first")
    assert first.returncode == 0, first.stderr
    (tmp_path / "first.json").write_text((out / "summary.json").read_text())

    full = score(bench, out, server, "--compare", str(tmp_path / "first.json"), "--label", "tiny")
    assert full.returncode == 0, full.stderr
    lines = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert len(lines) == 14 and len({r["key"] for r in lines}) == 14  # resumed: none scored twice
    items = {f"{s}/{i:04d}": item for s in ("Attribute", "Action", "Background", "Position", "Complex", "Three", "Four")
             for i, item in enumerate(json.loads((bench / f"{s}.json").read_text()))}
    for rec in lines:
        item = items[rec["key"]]
        assert not rec["errors"], rec["errors"]
        if rec["subset"] == "Position":  # routed to the box rule, which parsed the relation
            assert rec["rewards"]["sa"] == "position" and rec["details"]["sa"]["relation"] == "left"
        else:
            assert rec["rewards"]["sa"] == "judge" and 0.0 <= rec["scores"]["sa"] <= 1.0
            task = rec["subset"].lower() if rec["subset"] in ("Attribute", "Action", "Background", "Complex") else "generic"
            assert rec["details"]["sa"]["task"] == task  # the judge's template follows the subset
        categories = [item[f"category{k + 1}"] for k in range(len(item["input_path"]))]
        assert [s["category"] for s in rec["details"]["sc"]["subjects"]] == categories
        assert rec["rewards"]["sc_paper"] == "subject_paper" and rec["versions"]["sc_paper"] != rec["versions"]["sc"]
        assert rec["rewards"]["aesthetics"] == "hpsv3"

    table = list(csv.DictReader((out / "table.csv").open()))
    assert [r["subset"] for r in table] == ["Attribute", "Action", "Background", "Position", "Complex",
                                            "Three", "Four", "Overall"]
    assert float(table[-1]["sc_mean"]) == pytest.approx(np.mean([r["scores"]["sc"] for r in lines]), abs=1e-5)
    assert table[-1]["sa_scored"] == "14" and table[-1]["sa_failed"] == "0"
    markdown = (out / "table.md").read_text()
    assert "SA = judge, position" in markdown
    assert "## Subjects (one-to-one SC)" in markdown and "| Four       |        8 |" in markdown
    assert "| Overall" in full.stdout
    with Image.open(out / "radar.png") as img:
        assert img.size == radar_size(4)

    again = score(bench, out, server)
    assert again.returncode == 0 and (out / "scores.jsonl").read_text().count("\n") == 14


def test_failures_through_the_server_are_counted_not_averaged(server, bench, tmp_path):
    out = tmp_path / "flaky"
    res = score(bench, out, server, "--set", "rewards.sa=flaky_judge", "--subsets", "Action,Attribute")
    assert res.returncode == 0, res.stderr
    recs = {r["key"]: r for r in map(json.loads, (out / "scores.jsonl").read_text().splitlines())}
    for key in ("Action/0000", "Action/0001"):  # "jumping over": the stand-in judge fails on these
        assert recs[key]["scores"]["sa"] is None
        assert recs[key]["errors"] == {"sa": "fixed_cost was told to fail on 'jumping'"}
        assert recs[key]["scores"]["sc"] is not None
    table = {r["subset"]: r for r in csv.DictReader((out / "table.csv").open())}
    assert (table["Action"]["sa_mean"], table["Action"]["sa_scored"], table["Action"]["sa_failed"]) == ("", "0", "2")
    attribute = [recs[k]["scores"]["sa"] for k in ("Attribute/0000", "Attribute/0001")]
    assert float(table["Overall"]["sa_mean"]) == pytest.approx(np.mean(attribute), abs=1e-5)
    assert "SA 2" in res.stdout and "2 item(s) have failed dimensions" in res.stdout
    assert "SA x2: fixed_cost was told to fail on 'jumping'" in (out / "table.md").read_text()


def test_unhosted_reward_and_unreachable_server_are_clear_errors(server, bench, tmp_path):
    missing = score(bench, tmp_path / "o1", server, "--set", "rewards.aesthetics=pickscore")
    assert missing.returncode == 2
    assert "does not host ['pickscore']" in missing.stderr and "'subject_paper'" in missing.stderr
    down = score(bench, tmp_path / "o2", "http://127.0.0.1:9", "--set", "connect_timeout_s=0.5")
    assert down.returncode == 1 and "reward service http://127.0.0.1:9" in down.stderr
    assert "Traceback" not in missing.stderr + down.stderr
