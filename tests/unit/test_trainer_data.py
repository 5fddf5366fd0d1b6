"""Training prompts: inline items and PSRBench-style JSON files; per-step picks are deterministic."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from trainer.config import DataConfig
from trainer.rollout import load_items, pick_items


def test_psrbench_file_and_inline_items(tmp_path):
    Image.fromarray(np.full((20, 30, 3), 7, np.uint8)).save(tmp_path / "dog.png")
    Image.fromarray(np.full((10, 10, 3), 9, np.uint8)).save(tmp_path / "cup.png")
    entries = [
        {
            "instruction": "a dog beside a cup",
            "input_path": ["dog.png", "cup.png"],
            "category1": "dog",
            "category2": "cup",
        }
    ]
    (tmp_path / "train.json").write_text(json.dumps(entries))
    data = DataConfig(
        prompts=[{"prompt": "a red cube", "references": ["solid:255,0,0"], "categories": ["cube"]}],
        file=str(tmp_path / "train.json"),
    )
    items = load_items(data)
    assert [it.prompt for it in items] == ["a red cube", "a dog beside a cup"]
    assert items[0].references[0][0, 0].tolist() == [255, 0, 0]
    assert items[1].categories == ["dog", "cup"] and items[1].references[0].shape == (20, 30, 3)


def test_bad_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        load_items(DataConfig(prompts=[{"prompt": "x", "references": ["missing.png"]}]), tmp_path)
    with pytest.raises(ValueError, match="solid:R,G,B"):
        load_items(DataConfig(prompts=[{"prompt": "x", "references": ["solid:300,0"]}]))
    (tmp_path / "bad.json").write_text(json.dumps([{"input_path": []}]))
    with pytest.raises(ValueError, match="instruction"):
        load_items(DataConfig(file=str(tmp_path / "bad.json")))
    with pytest.raises(ValueError, match="no training prompts"):
        DataConfig()


def test_pick_items_is_deterministic_per_step_and_rank():
    items = list(range(10))
    assert pick_items(items, 4, 0, 3, 0) == pick_items(items, 4, 0, 3, 0)
    assert pick_items(items, 4, 0, 3, 0) != pick_items(items, 4, 0, 3, 1)
    assert pick_items(items, 4, 0, 3, 0) != pick_items(items, 4, 0, 4, 0)
    assert len(set(pick_items(items, 10, 0, 0, 0))) == 10  # without replacement when there are enough
