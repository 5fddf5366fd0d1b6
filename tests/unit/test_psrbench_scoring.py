"""PSRBench scoring against a fake reward client: routing, failures, resume, reports, radar."""

from __future__ import annotations

import json
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.client import RewardServiceError, Scores
from shared.config import ConfigError
from trainer.evaluation.dataset import load_bench
from trainer.evaluation.radar import plot_radar, radar_size
from trainer.evaluation.report import csv_table, load_summary, markdown_report, summarize, write_reports
from trainer.evaluation.results import load_result_paths
from trainer.evaluation.scoring import (
    BenchAborted,
    BenchConfig,
    BenchScorer,
    ScoreStore,
    check_run,
    wait_for_rewards,
)
from trainer.evaluation.synthetic import make_synthetic_bench

CONFIG = BenchConfig(rewards={"sc": "sc_ours", "sc_paper": "sc_paper", "sa": "judge", "sa_position": "box_rule",
                              "aesthetics": "aes"}, batch_size=2, concurrency=2)


class FakeClient:
    """Scores like the service would: per-reward columns, NaN plus an error where a reward fails.

    A reward's score is a known function of the image and reward name so tests can recompute it.
    ``down_after`` makes every call after that many raise like an unreachable service;
    ``refuse`` makes a request whose prompts contain that text fail like a 422.
    """

    def __init__(self, fail_sa_on: str | None = None, down_after: int | None = None, refuse: str | None = None):
        self.fail_sa_on, self.down_after, self.refuse = fail_sa_on, down_after, refuse
        self.calls: list[dict] = []

    @staticmethod
    def value(image: np.ndarray, reward: str) -> float:
        return float(image.mean() / 255.0) + len(reward) / 100.0

    def rewards(self):
        return [{"name": n, "ready": True} for n in ("sc_ours", "sc_paper", "judge", "box_rule", "aes")]

    def score(self, images, rewards, prompts=None, subjects=None, metadata=None) -> Scores:
        self.calls.append({"rewards": sorted(rewards), "prompts": list(prompts), "n_subjects": [len(s) for s in subjects],
                           "metadata": list(metadata)})
        if self.down_after is not None and len(self.calls) > self.down_after:
            raise RewardServiceError("cannot reach the reward service (gave up after 4 tries)")
        if self.refuse and any(self.refuse in p for p in prompts):
            raise RewardServiceError("reward service answered 422: image too large", status=422)
        errors, scores = [], {}
        for name in rewards:
            col = np.array([self.value(np.asarray(im), name) for im in images])
            for i, p in enumerate(prompts):
                if name in ("judge", "box_rule") and self.fail_sa_on and self.fail_sa_on in p:
                    col[i] = np.nan
                    errors.append({"sample": i, "reward": name, "message": "judge answer not parsable: 'maybe'"})
            scores[name] = col
        total = sum(scores.values())
        details = {n: [{"n": i, "similarity": [0.5, float("nan")]} for i in range(len(images))] for n in rewards}
        return Scores(scores, total, errors, details,
                      dict.fromkeys(rewards, "fake/1"))

    def submit(self, *args, **kwargs) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(self.score(*args, **kwargs))
        except Exception as exc:
            fut.set_exception(exc)
        return fut


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    return make_synthetic_bench(tmp_path / "bench", items_per_subset=2, size=32)


def make_scorer(bench: Path, client, out: Path, config: BenchConfig = CONFIG) -> tuple[BenchScorer, list]:
    items = load_bench(bench)
    out.mkdir(parents=True, exist_ok=True)
    paths = load_result_paths(bench / "results" / "results.json", items)
    return BenchScorer(client, config, bench, paths, ScoreStore(out / "scores.jsonl")), items


def test_position_items_route_to_the_box_rule(bench, tmp_path):
    client = FakeClient()
    scorer, items = make_scorer(bench, client, tmp_path / "out")
    scorer.run(scorer.pending(items))
    records = scorer.store.records
    assert set(records) == {it.key for it in items}
    for it in items:
        expected = "box_rule" if it.subset == "Position" else "judge"
        assert records[it.key]["rewards"]["sa"] == expected
        assert records[it.key]["rewards"]["sc"] == "sc_ours" and records[it.key]["rewards"]["sc_paper"] == "sc_paper"
    for call in client.calls:
        position = any("to the left of" in p for p in call["prompts"])
        assert ("box_rule" in call["rewards"]) == position and ("judge" in call["rewards"]) != position
    sent = {m["psrbench"]: m["task"] for c in client.calls for m in c["metadata"]}
    assert sent == {it.key: it.subset.lower() for it in items}  # the judge picks its template from it
    # Three and Four send all their subjects; scores are the service's, per dimension
    assert {n for c in client.calls for n in c["n_subjects"]} == {2, 3, 4}
    assert records["Four/0001"]["details"]["sc"] == {"n": 1, "similarity": [0.5, None]}  # NaN inside -> null
    image = np.asarray(Image.open(records["Four/0001"]["result_path"]).convert("RGB"))
    assert records["Four/0001"]["scores"]["aesthetics"] == pytest.approx(FakeClient.value(image, "aes"))


def test_failures_are_recorded_with_reasons_and_not_averaged_as_zero(bench, tmp_path):
    # Action item 0 is "a cup jumping over a hat"; make the judge fail on it only
    client = FakeClient(fail_sa_on="a cup jumping")
    results = bench / "results" / "results.json"
    (bench / "results" / "images" / "Background" / "0001.png").write_bytes(b"not a png")
    doc = json.loads(results.read_text())
    doc["subsets"]["Complex"][0].pop("result_path")
    results.write_text(json.dumps(doc))
    scorer, items = make_scorer(bench, client, tmp_path / "out")
    scorer.run(scorer.pending(items))
    recs = scorer.store.records
    assert recs["Action/0000"]["scores"]["sa"] is None
    assert recs["Action/0000"]["errors"] == {"sa": "judge answer not parsable: 'maybe'"}
    assert recs["Action/0000"]["scores"]["sc"] is not None
    assert recs["Complex/0000"]["errors"]["sc"] == "no result_path: the item was not generated"
    assert "cannot read image" in recs["Background/0001"]["errors"]["aesthetics"]
    summary = summarize([recs[it.key] for it in items], "fake")
    action = summary["table"]["Action"]["sa"]
    assert action == {"mean": recs["Action/0001"]["scores"]["sa"], "scored": 1, "failed": 1}
    overall = summary["table"]["Overall"]["sc"]
    scored = [recs[it.key]["scores"]["sc"] for it in items if recs[it.key]["scores"]["sc"] is not None]
    assert overall == {"mean": pytest.approx(np.mean(scored)), "scored": 12, "failed": 2}
    report = markdown_report(summary)
    assert "SA x1: judge answer not parsable" in report and "not generated" in report
    assert "| Action     |     2 |" in report and "SA 1" in report
    rows = csv_table(summary).splitlines()
    assert rows[0].startswith("subset,items,sc_mean,sc_scored,sc_failed,sc_paper_mean")
    assert rows[-1].startswith("Overall,14,") and len(rows) == 1 + 7 + 1
    assert "Complex,2,,0,1," not in rows  # one of two Complex items scored: mean present
    assert rows[5].split(",")[2] != ""


def test_resume_after_interruption_scores_only_the_rest(bench, tmp_path):
    out = tmp_path / "out"
    down = FakeClient(down_after=3)
    scorer, items = make_scorer(bench, down, out)
    with pytest.raises(BenchAborted, match="scoring stopped"):
        scorer.run(scorer.pending(items))
    first = dict(scorer.store.records)
    assert 0 < len(first) < len(items)
    with (out / "scores.jsonl").open("a") as f:  # a line cut off by the interruption
        f.write('{"key": "Four/0001", "sco')
    healthy = FakeClient()
    scorer2, _ = make_scorer(bench, healthy, out)
    todo = scorer2.pending(items)
    assert {it.key for it in todo} == {it.key for it in items} - set(first)
    scorer2.run(todo)
    rescored = {p for c in healthy.calls for p in c["prompts"]}
    assert rescored.isdisjoint({r["instruction"] for r in first.values()})
    assert set(scorer2.store.records) == {it.key for it in items}
    assert ScoreStore(out / "scores.jsonl").records == scorer2.store.records  # the file reloads whole
    assert make_scorer(bench, healthy, out)[0].pending(items) == []


def test_retry_failed_rescores_only_failed_items(bench, tmp_path):
    out = tmp_path / "out"
    scorer, items = make_scorer(bench, FakeClient(fail_sa_on="a cup jumping"), out)
    scorer.run(scorer.pending(items))
    again = FakeClient()
    scorer2, _ = make_scorer(bench, again, out)
    todo = scorer2.pending(items, retry_failed=True)
    assert [it.key for it in todo] == ["Action/0000"]
    scorer2.run(todo)
    assert scorer2.store.records["Action/0000"]["errors"] == {}


def test_a_refused_request_is_split_to_find_the_bad_sample(bench, tmp_path):
    client = FakeClient()
    scorer, items = make_scorer(bench, client, tmp_path / "out")
    bad = next(it for it in items if it.key == "Background/0001")
    client.refuse = bad.instruction
    scorer.run(scorer.pending(items))
    recs = scorer.store.records
    assert recs[bad.key]["scores"]["sc"] is None
    assert recs[bad.key]["errors"]["sa"].startswith("request refused: reward service answered 422")
    sibling = next(it for it in items if it.subset == bad.subset and it.key != bad.key)
    assert recs[sibling.key]["errors"] == {} and recs[sibling.key]["scores"]["sa"] is not None


def test_unhosted_reward_names_and_changed_settings_are_refused(tmp_path):
    client = FakeClient()
    with pytest.raises(ConfigError, match=r"does not host \['vlm_judge'\].*'sc_ours'"):
        wait_for_rewards(client, ["sc_ours", "vlm_judge"], timeout=1)
    wait_for_rewards(client, ["sc_ours", "box_rule"], timeout=1)
    check_run(tmp_path, {"rewards": {"sc": "a"}, "data": "/d"})
    check_run(tmp_path, {"rewards": {"sc": "b"}, "data": "/d"})  # nothing scored yet: a fixed mapping is fine
    ScoreStore(tmp_path / "scores.jsonl").add([{"key": "Action/0000", "errors": {}}])
    check_run(tmp_path, {"rewards": {"sc": "b"}, "data": "/d"})
    with pytest.raises(ConfigError, match="other rewards"):
        check_run(tmp_path, {"rewards": {"sc": "c"}, "data": "/d"})


def test_optional_dimensions_can_be_left_out():
    config = BenchConfig(rewards={"sc_paper": None, "aesthetics": None})
    assert config.routes("Position") == {"sc": "subject", "sa": "position"}
    assert config.reward_names(["Attribute", "Position"]) == ["judge", "position", "subject"]
    with pytest.raises(ValueError, match="extra"):
        BenchConfig(rewards={"judge": "x"})


def test_radar_png_has_the_expected_size(bench, tmp_path):
    scorer, items = make_scorer(bench, FakeClient(), tmp_path / "out")
    scorer.run(scorer.pending(items))
    a = summarize(scorer.store.records.values(), "model A")
    b = json.loads(json.dumps(a))
    b["label"] = "model B"
    b["table"]["Position"]["sa"]["mean"] = None  # a dimension with no scores still plots
    path = plot_radar([a, b], tmp_path / "radar.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == radar_size(4) == (1600, 460)
        pixels = np.asarray(img.convert("RGB"))
    assert (pixels.std(axis=(0, 1)) > 10).all()  # something was drawn


def test_compare_takes_summaries_and_explains_results_files(bench, tmp_path):
    scorer, items = make_scorer(bench, FakeClient(), tmp_path / "out")
    scorer.run(scorer.pending(items))
    write_reports(summarize(scorer.store.records.values(), "A"), tmp_path / "out")
    assert load_summary(tmp_path / "out")["label"] == "A"  # the run folder or its summary.json
    assert load_summary(tmp_path / "out" / "summary.json")["table"]["Overall"]["items"] == 14
    with pytest.raises(ConfigError, match="score it first with `psr bench score`"):
        load_summary(bench / "results" / "results.json")
    with pytest.raises(ConfigError, match="cannot read the summary"):
        load_summary(tmp_path / "missing.json")


def test_subject_detection_counts_from_sc_details():
    def rec(subset, subjects):
        return {"subset": subset, "scores": {"sc": 0.5}, "errors": {}, "rewards": {"sc": "subject"},
                "details": {"sc": {"subjects": subjects}}}

    found, missing = {"missing": False, "confused": False}, {"missing": True, "confused": False}
    confused = {"missing": False, "confused": True}
    records = [rec("Three", [found, missing, confused]), rec("Four", [found, found, missing, missing]),
               {**rec("Four", []), "details": {"sc": {"per_reference": [0.1]}}}]  # a reward without subjects
    summary = summarize(records, "x")
    assert summary["subjects"] == {"Three": {"subjects": 3, "missing": 1, "confused": 1},
                                   "Four": {"subjects": 4, "missing": 2, "confused": 0},
                                   "Overall": {"subjects": 7, "missing": 3, "confused": 1}}
    assert "| Four    |        4 |       2 |        0 |" in markdown_report(summary)


def test_a_starting_server_is_waited_for_within_the_connect_timeout():
    import httpx

    class Starting(FakeClient):
        def __init__(self, down_calls: int, loading_calls: int = 0):
            super().__init__()
            self.down_calls, self.loading_calls, self.asked = down_calls, loading_calls, 0

        def rewards(self):
            self.asked += 1
            if self.asked <= self.down_calls:
                raise httpx.ConnectError("connection refused")
            loading = self.asked <= self.down_calls + self.loading_calls
            return [{**r, "ready": not loading} for r in super().rewards()]

    client = Starting(down_calls=2, loading_calls=2)
    wait_for_rewards(client, ["judge"], timeout=10, connect_timeout=10)
    assert client.asked == 5
    with pytest.raises(httpx.ConnectError):
        wait_for_rewards(Starting(down_calls=1), ["judge"], timeout=10, connect_timeout=0)
    with pytest.raises(BenchAborted, match=r"\['judge'\] did not finish loading within 0 s"):
        wait_for_rewards(Starting(down_calls=0, loading_calls=100), ["judge"], timeout=0)


def test_a_non_finite_score_is_a_failure_not_a_crash_or_a_number(bench, tmp_path):
    from trainer.evaluation.scoring import records_from_scores

    items = load_bench(bench, ["Attribute"])[:1]
    routes = {"sc": "sc_ours", "sa": "judge"}
    res = Scores(scores={"sc_ours": np.array([np.inf]), "judge": np.array([0.5])}, total=np.array([np.nan]),
                 errors=[], details={}, versions={})
    (rec,) = records_from_scores(items, [tmp_path / "x.png"], routes, res)
    assert rec["scores"] == {"sc": None, "sa": 0.5} and "sc" in rec["errors"]
    store = ScoreStore(tmp_path / "scores.jsonl")
    store.add([rec])  # strict JSON (allow_nan=False) must not choke on it
    assert json.loads((tmp_path / "scores.jsonl").read_text())["scores"]["sc"] is None


def test_an_item_generated_after_scoring_is_scored_on_resume(bench, tmp_path):
    """Score a half-generated run, finish generating, score again: the new image is scored, not left failed."""
    out = tmp_path / "out"
    results = bench / "results" / "results.json"
    doc = json.loads(results.read_text())
    kept = doc["subsets"]["Complex"][0].pop("result_path")
    results.write_text(json.dumps(doc))
    scorer, items = make_scorer(bench, FakeClient(), out)
    scorer.run(scorer.pending(items))
    assert scorer.store.records["Complex/0000"]["errors"]["sc"] == "no result_path: the item was not generated"
    doc["subsets"]["Complex"][0]["result_path"] = kept  # generation resumed and finished
    results.write_text(json.dumps(doc))
    again = FakeClient()
    scorer2, _ = make_scorer(bench, again, out)
    todo = scorer2.pending(items)
    assert [it.key for it in todo] == ["Complex/0000"]
    scorer2.run(todo)
    assert scorer2.store.records["Complex/0000"]["errors"] == {}
    assert make_scorer(bench, again, out)[0].pending(items) == []


def test_scores_of_other_generated_images_are_not_resumed(bench, tmp_path, capsys):
    """Regenerating into the same results (e.g. another LoRA) must not reuse the earlier images' scores."""
    from reward_server.serving import free_port
    from shared.cli import main

    out = tmp_path / "out"
    results = bench / "results" / "results.json"
    argv = ["bench", "score", "--data", str(bench), "--results", str(results), "--out", str(out), "--no-progress",
            "--server", f"http://127.0.0.1:{free_port()}", "--set", "connect_timeout_s=0"]
    assert main(argv) == 1  # no server: stops after recording the run's settings
    ScoreStore(out / "scores.jsonl").add([{"key": "Action/0000", "errors": {}}])  # as if scored back then
    assert main(argv) == 1  # same images: resumable
    doc = json.loads(results.read_text())
    doc["meta"] = {**doc.get("meta", {}), "lora": "runs/other/checkpoints/step-000100"}
    results.write_text(json.dumps(doc))
    assert main(argv) == 2
    assert "other generation" in capsys.readouterr().err
