"""``run_generation``: images and results JSON for every item, batches by reference count, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.config import ConfigError
from trainer.evaluation.dataset import SUBSETS, load_bench
from trainer.evaluation.generate import item_seed, lazy, run_generation
from trainer.evaluation.results import load_result_paths
from trainer.evaluation.synthetic import make_synthetic_bench


class FakeGenerator:
    """Paints each image from its seed and first reference, so outputs can be checked exactly."""

    def __init__(self, stop_after: int | None = None):
        self.calls: list[tuple[list[str], list[int], list[int]]] = []
        self.stop_after = stop_after

    @staticmethod
    def expected(seed: int, first_ref: np.ndarray) -> np.ndarray:
        img = np.zeros((16, 16, 3), np.uint8)
        img[..., 0] = seed % 256
        img[..., 1:] = first_ref[:16, :16, 1:]
        return img

    def __call__(self, prompts, references, seeds):
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of a run
        self.calls.append((list(prompts), [len(r) for r in references], list(seeds)))
        return [self.expected(s, refs[0]) for s, refs in zip(seeds, references, strict=True)]


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    return make_synthetic_bench(tmp_path / "bench", items_per_subset=3, size=32, with_results=False)


def test_every_item_gets_an_image_and_a_result_path(bench, tmp_path):
    items = load_bench(bench)
    gen = FakeGenerator()
    results = run_generation(items, bench, gen, tmp_path / "gen", batch_size=4, seed=5, meta={"model": "fake"})
    for _, counts, _ in gen.calls:  # one reference layout per batch, at most batch_size items
        assert len(set(counts)) == 1 and len(counts) <= 4
    assert sorted(p for c in gen.calls for p in c[0]) == sorted(it.instruction for it in items)
    paths = load_result_paths(results, items)
    for it in items:
        ref = np.asarray(Image.open(bench / it.input_paths[0]).convert("RGB"))
        got = np.asarray(Image.open(paths[it.key]))
        np.testing.assert_array_equal(got, FakeGenerator.expected(item_seed(5, it.key), ref))
    doc = json.loads(results.read_text())
    assert doc["meta"] == {"model": "fake", "seed": 5}
    assert doc["subsets"]["Three"][2]["result_path"] == "images/Three/0002.png"
    assert doc["subsets"]["Three"][2]["category3"] == next(it for it in items if it.key == "Three/0002").raw["category3"]


def test_resume_after_interruption_generates_only_the_rest(bench, tmp_path):
    items = load_bench(bench)
    out = tmp_path / "gen"
    first = FakeGenerator(stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        run_generation(items, bench, first, out, batch_size=3, seed=1)
    done_before = {p: (out / "images").joinpath(p).stat().st_mtime_ns
                   for p in [str(f.relative_to(out / "images")) for f in (out / "images").rglob("*.png")]}
    assert len(done_before) == 6
    partial = json.loads((out / "results.json").read_text())["subsets"]
    assert sum("result_path" in e for s in partial.values() for e in s) == 6
    (out / "images" / next(iter(done_before))).unlink()  # a lost image is made again
    second = FakeGenerator()
    run_generation(items, bench, second, out, batch_size=3, seed=1)
    generated = [p for c in second.calls for p in c[0]]
    assert len(generated) == len(items) - 5
    assert all(load_result_paths(out / "results.json", items)[it.key].is_file() for it in items)
    kept = {p: (out / "images" / p).stat().st_mtime_ns for p in done_before if (out / "images" / p).exists()}
    assert sum(kept[p] == done_before[p] for p in kept) == 5  # untouched
    assert run_generation(items, bench, FakeGenerator(stop_after=0), out, seed=1).is_file()  # nothing left


def test_resuming_with_other_settings_is_refused(bench, tmp_path):
    items = load_bench(bench, ["Attribute"])
    run_generation(items, bench, FakeGenerator(), tmp_path / "gen", seed=0, meta={"model": "a"})
    with pytest.raises(ConfigError, match="other model, seed"):
        run_generation(items, bench, FakeGenerator(), tmp_path / "gen", seed=3, meta={"model": "b"})


def test_a_generator_returning_too_few_images_is_an_error(bench, tmp_path):
    items = load_bench(bench, ["Attribute"])
    with pytest.raises(RuntimeError, match="returned 1 images for 3 prompts"):
        run_generation(items, bench, lambda p, r, s: [np.zeros((8, 8, 3), np.uint8)], tmp_path / "gen")


def test_seeds_do_not_depend_on_batching():
    assert item_seed(0, "Four/0001") == item_seed(0, "Four/0001")
    assert item_seed(0, "Four/0001") != item_seed(1, "Four/0001") != item_seed(0, "Four/0002")


def test_the_model_loads_only_when_something_is_left_to_generate(bench, tmp_path):
    items = load_bench(bench, ["Attribute"])
    loads = []

    def load():
        loads.append(1)
        return FakeGenerator()

    run_generation(items, bench, lazy(load), tmp_path / "gen")
    run_generation(items, bench, lazy(load), tmp_path / "gen")
    assert loads == [1]


def test_a_run_on_some_subsets_keeps_the_others_in_the_results(bench, tmp_path):
    out = tmp_path / "gen"
    run_generation(load_bench(bench), bench, FakeGenerator(), out, seed=2)
    four = FakeGenerator()
    run_generation(load_bench(bench, ["Four"]), bench, four, out, seed=2)
    assert four.calls == []  # already done
    paths = load_result_paths(out / "results.json", load_bench(bench))
    assert all(p is not None and p.is_file() for p in paths.values())
    assert list(json.loads((out / "results.json").read_text())["subsets"]) == list(SUBSETS)
