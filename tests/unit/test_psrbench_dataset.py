"""PSRBench loader and results files: valid data loads, every problem is reported precisely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.cli import main as psr_main
from trainer.evaluation.dataset import SUBSETS, DatasetError, load_bench
from trainer.evaluation.results import load_result_paths, results_label
from trainer.evaluation.synthetic import make_synthetic_bench


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    return make_synthetic_bench(tmp_path / "bench", items_per_subset=2, size=32)


def _edit(root: Path, subset: str, fn) -> None:
    path = root / f"{subset}.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_synthetic_set_loads_with_subject_counts(bench):
    items = load_bench(bench)
    assert [it.subset for it in items] == [s for s in SUBSETS for _ in range(2)]
    counts = {it.subset: len(it.categories) for it in items}
    assert counts["Three"] == 3 and counts["Four"] == 4 and counts["Position"] == 2
    first = items[0]
    assert first.key == "Attribute/0000"
    assert first.categories == [first.raw["category1"], first.raw["category2"]]
    assert all((bench / p).is_file() for it in items for p in it.input_paths)


def test_input_paths_spelling_is_accepted(bench):
    def rename(data):
        data[0]["input_paths"] = data[0].pop("input_path")

    _edit(bench, "Action", rename)
    action = [it for it in load_bench(bench, ["Action"])]
    assert action[0].input_paths == json.loads((bench / "Action.json").read_text())[0]["input_paths"]


def test_every_problem_is_reported_with_file_item_and_field(bench):
    (bench / "Action.json").unlink()
    _edit(bench, "Attribute", lambda d: d[1].pop("instruction"))
    _edit(bench, "Background", lambda d: d[0].update(input_path="refs/dog.png"))
    _edit(bench, "Position", lambda d: d[1].update(input_path=["refs/dog.png", "refs/nope.png"]))
    _edit(bench, "Complex", lambda d: d[0].pop("category2"))
    (bench / "Three.json").write_text(json.dumps({"not": "a list"}))
    (bench / "Four.json").write_text("[{broken")
    with pytest.raises(DatasetError) as info:
        load_bench(bench)
    problems = info.value.problems
    expected = [
        ("Action.json", "file is missing"),
        ("Attribute.json: item 1: instruction", "missing"),
        ("Background.json: item 0: input_path", "list of non-empty path strings"),
        ("Position.json: item 1: input_path[1]", "nope.png does not exist"),
        ("Complex.json: item 0: category1..category2", "found category1"),
        ("Three.json", "expected a JSON list"),
        ("Four.json", "not valid JSON"),
    ]
    for where, what in expected:
        assert any(where in p and what in p for p in problems), (where, what, problems)
    assert len(problems) == len(expected)


def test_bad_values_and_double_spelling_are_errors(bench):
    _edit(bench, "Attribute", lambda d: d[0].update(category1="", input_paths=d[0]["input_path"]))
    _edit(bench, "Action", lambda d: d[0].update(input_path=[]))
    with pytest.raises(DatasetError) as info:
        load_bench(bench, ["Attribute", "Action"])
    text = str(info.value)
    assert "Attribute.json: item 0: category1: must be a non-empty string" in text
    assert "Attribute.json: item 0: input_path: give either input_path or input_paths" in text
    assert "Action.json: item 0: input_path: needs 1 to 4 references, got 0" in text


def test_unknown_subset_and_missing_root(tmp_path, bench):
    with pytest.raises(DatasetError, match="unknown subset"):
        load_bench(bench, ["Attribute", "Colour"])
    with pytest.raises(DatasetError, match="does not exist"):
        load_bench(tmp_path / "nowhere")


def test_results_map_items_to_images(bench):
    items = load_bench(bench)
    paths = load_result_paths(bench / "results" / "results.json", items)
    assert set(paths) == {it.key for it in items}
    assert paths["Four/0001"] == bench / "results" / "images" / "Four" / "0001.png"
    assert all(p.is_file() for p in paths.values())
    assert results_label(bench / "results" / "results.json") == "synthetic"
    assert results_label(bench / "results") == "synthetic"  # a generate output folder
    assert results_label(bench) == "bench"  # no recorded model: the folder's name


def test_results_in_the_papers_forms(bench, tmp_path):
    items = load_bench(bench, ["Attribute", "Position"])
    doc = json.loads((bench / "results" / "results.json").read_text())["subsets"]
    doc["Position"][1].pop("result_path")  # not generated: None, reported by the scorer
    plain = bench / "results" / "plain.json"
    plain.write_text(json.dumps({"Attribute": doc["Attribute"], "Position": doc["Position"]}))
    paths = load_result_paths(plain, items)
    assert paths["Position/0001"] is None and paths["Position/0000"].is_file()
    folder = bench / "results"
    for subset in ("Attribute", "Position"):
        (folder / f"{subset}.json").write_text(json.dumps(doc[subset]))
    assert load_result_paths(folder, items)["Attribute/0001"] == folder / doc["Attribute"][1]["result_path"]


def test_results_that_do_not_match_the_benchmark(bench):
    items = load_bench(bench, ["Attribute", "Action"])
    path = bench / "results" / "results.json"
    doc = json.loads(path.read_text())
    doc["subsets"]["Attribute"][0]["instruction"] = "something else"
    doc["subsets"]["Attribute"][1]["result_path"] = 7
    doc["subsets"]["Action"].pop()
    path.write_text(json.dumps(doc))
    with pytest.raises(DatasetError) as info:
        load_result_paths(path, items)
    text = str(info.value)
    assert "Attribute: item 0: instruction 'something else' differs" in text
    assert "Attribute: item 1: result_path: must be a non-empty path string, got 7" in text
    assert "Action: has 1 items, the benchmark has 2" in text


def test_cli_reports_validation_errors_without_traceback(bench, tmp_path, capsys):
    _edit(bench, "Attribute", lambda d: d[0].pop("instruction"))
    rc = psr_main(["bench", "score", "--data", str(bench), "--results", str(bench / "results"),
                   "--server", "http://127.0.0.1:9", "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Attribute.json: item 0: instruction: missing" in err and "Traceback" not in err
