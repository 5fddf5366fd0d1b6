"""Training prompts: inline items and PSRBench-style JSON files; per-step picks are deterministic."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from trainer.config import DataConfig
from trainer.dataset import DatasetError
from trainer.mixing import ReferenceMix
from trainer.rollout import load_items


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
    with pytest.raises(DatasetError, match=r"bad\.json: item 0: instruction"):
        load_items(DataConfig(file=str(tmp_path / "bad.json")))
    with pytest.raises(ValueError, match="no training prompts"):
        DataConfig()


def test_draws_are_deterministic_per_generator_seed():
    mix = ReferenceMix([2] * 10)
    draw = lambda *seed: mix.draw(np.random.default_rng(list(seed)), 4)  # noqa: E731
    assert draw(0, 3, 0) == draw(0, 3, 0)
    assert draw(0, 3, 0) != draw(0, 3, 1) and draw(0, 3, 0) != draw(0, 4, 0)
    assert len(set(mix.draw(np.random.default_rng(0), 10))) == 10  # without replacement when there are enough


def test_reference_mix_draws_counts_with_the_given_probabilities():
    counts = [2] * 50 + [3] * 5 + [4] * 30  # the data's own proportions are not the mix
    mix = ReferenceMix(counts, {2: 0.9, 3: 0.05, 4: 0.05})
    drawn = np.array(counts)[mix.draw(np.random.default_rng(0), 20000)]
    shares = [np.mean(drawn == k) for k in (2, 3, 4)]
    np.testing.assert_allclose(shares, [0.9, 0.05, 0.05], atol=0.01)
    # within a count, items are equally likely
    fours = np.array(mix.draw(np.random.default_rng(1), 20000))
    hist = np.bincount(fours[np.array(counts)[fours] == 4], minlength=85)[55:]
    assert hist.min() > 0.6 * hist.mean()
    # a batch shares one count, drawn with the same probabilities
    batches = [mix.draw_batch(np.random.default_rng(s), 3) for s in range(4000)]
    assert all(len({counts[i] for i in b}) == 1 for b in batches)
    np.testing.assert_allclose(np.mean([counts[b[0]] == 2 for b in batches]), 0.9, atol=0.02)
    with pytest.raises(ValueError, match=r"asks for items with \[1\] references.*2: 50 items"):
        ReferenceMix(counts, {1: 0.5, 2: 0.5})
    with pytest.raises(ValueError, match="sum to 1"):
        DataConfig(file="x", reference_mix={2: 0.9, 3: 0.2})


def test_psrbench_file_categories_must_cover_every_reference(tmp_path):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((8, 8, 3), 5, np.uint8)).save(tmp_path / name)
    entries = [{"instruction": "a dog and a cup", "input_paths": ["a.png", "b.png"], "category1": "dog"}]
    (tmp_path / "train.json").write_text(json.dumps(entries))
    with pytest.raises(DatasetError, match=r"train\.json: item 0: category1\.\.category2: one per reference"):
        load_items(DataConfig(file=str(tmp_path / "train.json")))
    entries[0]["category2"] = "cup"  # input_paths (PSRBench's other spelling) is read too
    (tmp_path / "train.json").write_text(json.dumps(entries))
    (item,) = load_items(DataConfig(file=str(tmp_path / "train.json")))
    assert item.categories == ["dog", "cup"] and len(item.references) == 2


class _Recorder:
    def submit(self, images, **kwargs):
        from concurrent.futures import Future

        self.kwargs = kwargs
        fut: Future = Future()
        fut.set_result(None)
        return fut


def test_items_without_categories_send_no_subjects_instead_of_crashing(tmp_path):
    from trainer.config import TrainConfig
    from trainer.rollout import Item, Rollout, submit_scores

    ref = np.full((8, 8, 3), 5, np.uint8)
    items = [Item("a dog", [ref], ["dog"]), Item("a thing", [ref], [])]  # same layout, one unlabelled
    rollout = Rollout(None, None, None, np.array([0, 1]), [ref, ref], items)
    cfg = TrainConfig(
        model={"path": "unused"}, data={"prompts": [{"prompt": "x"}]}, rewards={"reward_weights": {"subject": 1.0}}
    )
    client = _Recorder()
    submit_scores(client, rollout, cfg).result()
    subjects = client.kwargs["subjects"]
    assert subjects[1] == [] and subjects[0][0][0] == "dog" and subjects[0][0][1] is ref
