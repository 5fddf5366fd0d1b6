"""The one dataset format: written once, read by SFT, GRPO and PSRBench with their own rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from trainer.config import DataConfig
from trainer.dataset import (
    DATASET_FILE,
    GRPO_RULES,
    SFT_RULES,
    DatasetError,
    item_entry,
    load_dataset,
    write_dataset,
)
from trainer.evaluation.dataset import SUBSETS, load_bench
from trainer.rollout import load_items


def _image(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path):
    for name, v in (("refs/dog.png", 10), ("refs/cup.png", 20), ("refs/hat.png", 30), ("targets/0.png", 40)):
        _image(tmp_path / name, v)
    entries = [
        item_entry("a dog beside a cup", ["refs/dog.png", "refs/cup.png"], ["dog", "cup"], "targets/0.png",
                   task="background", seed=7, filters={"identity": [0.8, 0.7]}),
        item_entry("a dog, a cup and a hat", ["refs/dog.png", "refs/cup.png", "refs/hat.png"],
                   ["dog", "cup", "hat"], "targets/0.png", task="three"),
    ]  # fmt: skip
    write_dataset(tmp_path, entries)
    return tmp_path


def test_written_items_read_back_with_provenance(folder):
    root, items = load_dataset(folder, SFT_RULES)
    assert root == folder
    assert [it.instruction for it in items] == ["a dog beside a cup", "a dog, a cup and a hat"]
    assert items[0].input_paths == ["refs/dog.png", "refs/cup.png"] and items[0].categories == ["dog", "cup"]
    assert items[0].target_path == "targets/0.png" and items[0].task == "background"
    assert items[0].raw["seed"] == 7 and items[0].raw["filters"]["identity"] == [0.8, 0.7]
    on_disk = json.loads((folder / DATASET_FILE).read_text())
    assert on_disk[1]["category3"] == "hat" and on_disk[1]["input_path"][2] == "refs/hat.png"


def test_sft_needs_a_target_and_names_the_item(folder):
    data = json.loads((folder / DATASET_FILE).read_text())
    del data[1]["target_path"]
    data[0]["target_path"] = "targets/gone.png"
    (folder / DATASET_FILE).write_text(json.dumps(data))
    with pytest.raises(DatasetError) as info:
        load_dataset(folder, SFT_RULES)
    problems = info.value.problems
    assert any("item 0: target_path" in p and "gone.png does not exist" in p for p in problems), problems
    assert any("item 1: target_path: missing" in p for p in problems), problems
    assert len(problems) == 2
    load_dataset(folder, GRPO_RULES)  # GRPO does not need targets


def test_bench_reads_a_dataset_folder_grouped_by_task(folder):
    items = load_bench(folder)
    assert [(it.subset, it.key) for it in items] == [("Background", "Background/0000"), ("Three", "Three/0000")]
    assert load_bench(folder, ["Three"])[0].categories == ["dog", "cup", "hat"]
    data = json.loads((folder / DATASET_FILE).read_text())
    del data[0]["task"]
    data[1]["task"] = "juggling"
    (folder / DATASET_FILE).write_text(json.dumps(data))
    with pytest.raises(DatasetError) as info:
        load_bench(folder)
    assert any("item 0: task: missing" in p for p in info.value.problems)
    assert any("item 1: task: 'juggling' is not one of" in p for p in info.value.problems)
    assert SUBSETS[0] == "Attribute" and len(SUBSETS) == 7


def test_grpo_trains_on_a_dataset_folder(folder, monkeypatch):
    import trainer.rollout

    reads, real = [], trainer.rollout.load_image
    monkeypatch.setattr(trainer.rollout, "load_image", lambda path: reads.append(path) or real(path))
    items = load_items(DataConfig(file=str(folder)))
    assert [len(it.references) for it in items] == [2, 3]
    assert reads == []  # references are read when an item is drawn: a paper-scale dataset does not fit in memory
    decoded = items[1].decoded()
    assert reads == [folder / "refs/dog.png", folder / "refs/cup.png", folder / "refs/hat.png"]
    assert decoded.references[2][0, 0].tolist() == [30, 30, 30] and decoded.categories == ["dog", "cup", "hat"]


def test_writing_refuses_items_that_would_not_load(tmp_path):
    with pytest.raises(DatasetError, match=r"input_path\[0\]: reference image .*nope\.png does not exist"):
        write_dataset(tmp_path, [item_entry("x", ["nope.png"], ["dog"])])
    with pytest.raises(ValueError, match="2 categories for 1 references"):
        item_entry("x", ["a.png"], ["dog", "cup"])
    assert not (tmp_path / DATASET_FILE).exists()
