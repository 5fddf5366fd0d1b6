"""psr datagen's parts without models: categories and the item plan, answer parsing, manifests,
box rules, settings hashes and config errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reward_server.models.chat_endpoint import ChatAnswer
from reward_server.models.detectors import Detection
from reward_server.rewards.position import parse_relation, relation_score
from shared.config import ConfigError, load_config
from trainer.datagen.categories import load_categories, normalise, parse_shard, plan_item, shard_indices
from trainer.datagen.config import DatagenConfig, stage_hashes
from trainer.datagen.filters import check_boxes, position_instruction, relation_of
from trainer.datagen.manifest import Manifest, RunFolder
from trainer.datagen.text import (
    EndpointUnavailable,
    TemplateWriter,
    WriteJob,
    missing_subjects,
    parse_labelled,
    read_answer,
)

STAGES = ["prompts", "targets", "detect", "references", "edit", "caption"]


def test_bundled_objects365_has_365_clean_names():
    names = load_categories("objects365")
    assert len(names) == 365 and len(set(names)) == 365
    assert names[:3] == ["person", "sneakers", "chair"] and "cabinet" in names and "monitor" in names
    assert all(n == n.lower().strip() and "/" not in n for n in names)
    assert normalise("  Washing Machine/Drying Machine ") == "washing machine"


def test_user_lists_and_files(tmp_path):
    listed = tmp_path / "cats.txt"
    listed.write_text("# my subjects\nDog\ncup\n\nDog\nTeddy  Bear\n")
    assert load_categories(str(listed)) == ["dog", "cup", "teddy bear"]
    assert load_categories(["Cat", "cat", "Hat/Cap"]) == ["cat", "hat"]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="empty"):
        load_categories(str(tmp_path / "empty.txt"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_categories(str(tmp_path / "nope.txt"))


def test_plan_depends_only_on_seed_and_index():
    cats = [f"c{i}" for i in range(20)]
    weights = {"attribute": 1.0, "three": 1.0, "four": 1.0}
    first = [plan_item(7, i, cats, weights) for i in range(50)]
    assert [plan_item(7, i, cats, weights) for i in (49, 3, 17)] == [first[49], first[3], first[17]]
    assert first != [plan_item(8, i, cats, weights) for i in range(50)]
    for p in first:
        assert len(set(p.categories)) == {"attribute": 2, "three": 3, "four": 4}[p.task] == len(p.categories)
    assert {p.task for p in first} == set(weights) and len({p.id for p in first}) == 50
    assert first[3].id == "s7-0000003"


def test_shards_partition_the_items():
    parts = [shard_indices(23, (i, 4)) for i in range(4)]
    assert sorted(k for part in parts for k in part) == list(range(23))
    assert all(k % 4 == i for i, part in enumerate(parts) for k in part)
    assert parse_shard("3/8") == (3, 8)
    for bad in ("8/8", "x", "1/0", "-1/2"):
        with pytest.raises(ConfigError, match="I/N"):
            parse_shard(bad)


def test_parse_shard_auto_reads_the_launcher(monkeypatch):
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert parse_shard("auto") == (5, 8)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Prompt: a dog on a sofa", "a dog on a sofa"),
        ("Sure!\n**Prompt:** \"a dog on a sofa\"\n", "a dog on a sofa"),
        ("prompt : a dog", "a dog"),
        ("- Prompt: a dog\nPrompt: a cat", "a dog"),
    ],
)
def test_labelled_answers_are_read(text, expected):
    assert parse_labelled(text, "Prompt") == (expected, None)


@pytest.mark.parametrize("text", ["", "a dog on a sofa", "Prompt:", "Prompt: 42", "Caption: a dog", "Prompt: " + "a" * 700,
                                  "\n\n\n\n", "Prompt: a dog\x07 on a sofa"])
def test_unlabelled_or_broken_answers_are_rejected(text):
    value, problem = parse_labelled(text, "Prompt")
    assert value is None and problem


def test_subjects_are_named_by_category_word():
    assert missing_subjects("Two dogs and a teddy-bear beside glasses", ["dog", "teddy bear", "glasses"]) == []
    assert missing_subjects("a hotdog and a cupboard", ["dog", "cup"]) == ["dog", "cup"]
    assert missing_subjects("A Wine Glass", ["wine glass", "bus"]) == ["bus"]


def test_read_answer_reasons_and_unavailable_endpoints():
    assert read_answer(ChatAnswer("Prompt: a dog and a cup"), "scene", ["dog", "cup"], True) == ("a dog and a cup", "", "")
    assert read_answer(ChatAnswer("Prompt: a dog"), "scene", ["dog", "cup"], True)[1] == "missing_subject"
    assert read_answer(ChatAnswer("Edit: make it red"), "edit", ["dog", "cup"], False)[0] == "make it red"
    assert read_answer(ChatAnswer("garbage"), "scene", ["dog"], True)[1] == "unparseable"
    assert read_answer(ChatAnswer(None, "endpoint answered HTTP 400: bad"), "scene", ["dog"], True)[1] == "unparseable"
    with pytest.raises(EndpointUnavailable, match="refused"):
        read_answer(ChatAnswer(None, "connection refused (after 3 attempts)", unavailable=True), "scene", ["dog"], True)


def test_template_writer_is_deterministic_and_names_everything():
    writer = TemplateWriter(DatagenConfig(writer={"kind": "template"}, filters={"server": "http://x"}).writer)
    jobs = [WriteJob("scene", ["dog", "apple", "cup"], seed) for seed in range(20)]
    answers = [a.text for a in writer.answers(jobs)]
    assert answers == [a.text for a in writer.answers(jobs)] and len(set(answers)) > 3
    assert all(read_answer(ChatAnswer(a), "scene", ["dog", "apple", "cup"], True)[0] for a in answers)
    assert "an apple" in answers[0]
    edit = writer.answers([WriteJob("edit", ["dog", "cup"], 1, task="attribute", prompt="x")])[0].text
    assert edit.startswith("Edit: ") and missing_subjects(edit, ["dog", "cup"]) != ["dog", "cup"]


def test_manifest_survives_a_torn_write_and_keeps_the_first_record(tmp_path):
    manifest = Manifest(tmp_path / "m.jsonl")
    manifest.append([{"id": "a", "v": 1}, {"id": "b", "v": 2}])
    with open(manifest.path, "a") as f:
        f.write('{"id": "a", "v": 3}\n{"id": "c", "v"')  # a repeated id, then a write cut short
    assert {k: r["v"] for k, r in manifest.read().items()} == {"a": 1, "b": 2}
    assert manifest.repair() and manifest.path.read_text().endswith('"v": 3}\n')
    manifest.append([{"id": "c", "v": 4}])
    assert manifest.read()["c"]["v"] == 4 and not manifest.repair()
    manifest.path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ConfigError, match="line 2"):
        manifest.read()


def test_images_are_written_whole_and_partial_files_removed(tmp_path):
    run = RunFolder(tmp_path)
    rel = run.image_relpath("targets", "s0-0001234", 1234)
    assert rel == "images/targets/0001/s0-0001234.png"
    image = np.random.default_rng(0).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    run.save_image(rel, image)
    assert np.array_equal(run.load_image(rel), image) and not list(tmp_path.rglob("*.tmp"))
    (tmp_path / rel).with_name("half.png.tmp").write_bytes(b"\x89PNG half")
    assert run.remove_partial_files() == 1 and not list(tmp_path.rglob("*.tmp"))


def test_one_writer_per_run_folder(tmp_path):
    run = RunFolder(tmp_path)
    with run.locked(), pytest.raises(ConfigError, match="being written by psr datagen"), RunFolder(tmp_path).locked():
        pass
    with run.locked():  # released
        pass


def _boxes(**found):
    return {k: [Detection(tuple(b), s) for b, s in v] for k, v in found.items()}


def test_box_rules():
    good = _boxes(dog=[((0, 0, 20, 20), 0.9)], cup=[((30, 30, 60, 50), 0.8)])
    check = check_boxes(good, ["dog", "cup"], 64, 64, 0.05)
    assert not check.reason and check.boxes == [(0, 0, 20, 20), (30, 30, 60, 50)] and check.scores == [0.9, 0.8]
    assert check_boxes(_boxes(dog=[((0, 0, 20, 20), 0.9)]), ["dog", "cup"], 64, 64, 0).reason == "not_detected"
    twice = _boxes(dog=[((0, 0, 20, 20), 0.9), ((40, 40, 60, 60), 0.5)], cup=[((30, 30, 60, 50), 0.8)])
    assert check_boxes(twice, ["dog", "cup"], 64, 64, 0).reason == "detected_twice"
    small = check_boxes(good, ["dog", "cup"], 64, 64, 0.2)  # 400 / 4096 < 0.2
    assert small.reason == "box_too_small" and "dog" in small.message


@pytest.mark.parametrize(
    ("a", "b", "relation"),
    [
        ((0, 20, 10, 30), (40, 22, 50, 32), "left"),
        ((40, 22, 50, 32), (0, 20, 10, 30), "right"),
        ((20, 0, 30, 10), (22, 40, 32, 50), "above"),
        ((22, 40, 32, 50), (20, 0, 30, 10), "below"),
        ((0, 0, 30, 30), (10, 10, 40, 40), "next_to"),
    ],
)
def test_position_instructions_read_back_by_the_position_reward(a, b, relation):
    assert relation_of(a, b) == relation
    text = position_instruction("teddy bear", "apple", relation)
    parsed = parse_relation(text, ["teddy bear", "apple"])
    assert (parsed.subject, parsed.relation, parsed.object) == ("teddy bear", relation, "apple")
    assert relation_score(relation, a, b) == 1.0  # the target itself earns a full position score


def _cfg(**overrides) -> DatagenConfig:
    base = {"filters": {"server": "http://127.0.0.1:1"}}
    base.update(overrides)
    return DatagenConfig.model_validate(base)


def test_a_setting_changes_its_stage_and_every_later_one_only():
    cats = ["dog", "cup", "hat", "cat"]
    base = stage_hashes(_cfg(), cats, STAGES)
    changed = stage_hashes(_cfg(detect={"min_box_area": 0.5}), cats, STAGES)
    assert [base[s] == changed[s] for s in STAGES] == [True, True, False, False, False, False]
    assert stage_hashes(_cfg(), cats[:3], STAGES)["prompts"] != base["prompts"]  # other categories
    execution_only = _cfg(t2i={"device": "cuda:3", "batch_size": 64}, writer={"concurrency": 2},
                          filters={"server": "redis://h:6379/0"})
    assert stage_hashes(execution_only, cats, STAGES) == base


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["categories=[]"], "category list is empty"),
        (["filters.server=null"], "filters.server is not set"),
        (["filters.identity_floor=0.95"], "must be below filters.copy_paste_ceiling"),
        (["writer.kind=openai"], "needs writer.endpoint"),
        (["tasks.dance=1"], "unknown task"),
        (["t2i.size=100"], "multiple of 16"),
        (["writer.scene_instruction=Write about {things}"], "bad placeholder"),
        (["detect.detector.kind=yolo"], "detector.kind"),
        (["surprise=1"], "surprise"),
    ],
)
def test_config_errors_name_the_key(tmp_path, override, message):
    path = tmp_path / "d.yaml"
    path.write_text(json.dumps({"filters": {"server": "http://127.0.0.1:1"}}))
    with pytest.raises(ConfigError, match=message):
        load_config(DatagenConfig, path, override)


def test_defaults_are_the_documented_ones():
    """README "Data": the paper-scale defaults, checked against numbers written out here."""
    from trainer.datagen.config import subjects_for
    from trainer.datagen.text import MAX_ANSWER_CHARS

    cfg = _cfg()
    weights = cfg.tasks
    total = sum(weights.values())
    by_count = {n: sum(w for t, w in weights.items() if subjects_for(t) == n) / total for n in (2, 3, 4)}
    assert by_count == pytest.approx({2: 0.9, 3: 0.05, 4: 0.05})
    assert cfg.seed == 0 and cfg.items == 1000 and cfg.categories == "objects365"
    assert (cfg.writer.kind, cfg.writer.model, cfg.writer.temperature) == ("transformers", "Qwen/Qwen2.5-7B-Instruct", 0.7)
    assert (cfg.t2i.model, cfg.t2i.steps, cfg.t2i.guidance_scale, cfg.t2i.size) == ("black-forest-labs/FLUX.1-dev", 28, 3.5, 512)
    assert (cfg.detect.detector.kind, cfg.detect.detector.threshold(), cfg.detect.detector.text_threshold) == \
        ("grounding_dino", 0.35, 0.25)
    assert (cfg.detect.min_box_area, cfg.detect.crop_margin) == (0.01, 0.05)
    for section in (cfg.references, cfg.edit):
        assert (section.model, section.steps, section.size, section.guidance_scale) == \
            ("black-forest-labs/FLUX.1-Kontext-dev", 28, 512, 2.5)
    assert cfg.references.prompt == "a photo of the {category} {place}, seen from another angle"
    assert cfg.edit.check_subjects and (cfg.caption.kind, cfg.caption.model) == ("transformers", "Qwen/Qwen2.5-VL-7B-Instruct")
    f = cfg.filters
    assert (f.aesthetic_reward, f.aesthetic_floor, f.identity_reward, f.identity_floor, f.copy_paste_ceiling) == \
        ("aesthetic", 5.0, "dino_i", 0.5, 0.9)
    assert (cfg.contact_sheet.items, cfg.contact_sheet.thumb, MAX_ANSWER_CHARS) == (16, 160, 600)


def test_shipped_configs_load():
    from pathlib import Path

    from trainer.datagen.models import check_model_paths
    from trainer.datagen.tiny import tiny_config

    repo = Path(__file__).resolve().parents[2]
    flux = load_config(DatagenConfig, repo / "configs" / "datagen_flux.yaml")
    assert flux.writer.kind == "openai" and flux.caption.kind == "openai" and flux.filters.server
    assert check_model_paths(flux, STAGES) == []  # hub ids
    tiny = DatagenConfig.model_validate(tiny_config())
    assert tiny.writer.kind == "template" and tiny.caption.kind == "none" and tiny.cpu_threads == 1


def test_edit_stage_drops_an_edit_that_lost_a_subject_and_describes_positions(tmp_path):
    from reward_server.models.detectors import DetectorOptions, FixedDetector
    from trainer.datagen.filters import RewardFilters
    from trainer.datagen.stage2 import EditStage
    from trainer.datagen.stages import StageContext

    cfg = DatagenConfig.model_validate({"filters": {"aesthetic_reward": None, "identity_reward": None}})
    run = RunFolder(tmp_path)
    target = run.save_image("images/targets/t.png", np.zeros((32, 32, 3), np.uint8))
    stage = EditStage(StageContext(cfg, run))
    stage.filters = RewardFilters(cfg.filters)  # no service: both filters off
    stage.generate = lambda prompts, refs, seeds: [np.full((32, 32, 3), 200, np.uint8) for _ in prompts]
    stage.detector = FixedDetector(DetectorOptions(kind="fixed"))  # finds nothing: the edit lost its subjects
    base = {"seed": 1, "categories": ["dog", "cup"], "target": target, "boxes": [[0, 0, 8, 8], [20, 0, 28, 8]]}
    items = [{**base, "id": "a", "index": 0, "task": "attribute", "edit": "make the dog red"},
             {**base, "id": "b", "index": 1, "task": "position", "edit": None},
             {**base, "id": "c", "index": 2, "task": "four", "edit": None}]
    edited, position, unchanged = stage.process(items)
    assert edited["status"] == "dropped" and edited["reason"] == "not_detected"
    assert edited["message"].startswith("after the edit") and run.load_image(edited["final_target"]).mean() == 200
    assert position["status"] == "kept" and position["relation"] == {"subject": "dog", "relation": "left", "object": "cup"}
    assert unchanged["status"] == "kept" and unchanged["final_target"] == target and not unchanged["edited"]


def test_a_model_that_fails_to_load_in_any_way_is_one_config_line():
    from trainer.datagen.models import loading

    expected = r"^caption.model: cannot load lm: Qwen2Tokenizer has no attribute tokenizer$"
    # a text LM given as the VLM: its processor has no .tokenizer
    with pytest.raises(ConfigError, match=expected), loading("caption.model", "lm"):
        raise AttributeError("Qwen2Tokenizer has no attribute tokenizer")


def _fake_hub_cache(root, repo: str, commit: str, filename: str = "config.json"):
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "snapshots" / commit / filename).write_text("{}")


def test_hub_models_are_versioned_by_commit_and_checked_before_work(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from trainer.datagen.models import check_hub_models, model_version

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no network: the cache decides
    _fake_hub_cache(tmp_path, "org/t2i", "0123abcd", "model_index.json")
    assert model_version("org/t2i") == "org/t2i@0123abcd"
    assert model_version("org/elsewhere", "v2") == "org/elsewhere@v2"  # not downloaded yet: what was asked for
    cfg = _cfg(t2i={"model": "org/t2i"}, references={"model": "modls/generator"})
    problems = check_hub_models(cfg, ["targets", "references"])
    assert problems == ["references.model: modls/generator is not a local folder and not in the Hugging Face cache "
                        "(HF_HUB_OFFLINE is set): check the path, or download it first"]
    assert check_hub_models(cfg, ["targets"]) == []


def test_the_caption_of_an_edit_states_what_the_edit_changed():
    from trainer.datagen.text import Captioner, CaptionJob

    captioner = Captioner(_cfg(caption={"kind": "none"}).caption)
    job = CaptionJob(np.zeros((8, 8, 3), np.uint8), ["dog", "cup"], "a dog and a cup", "make the dog red", 1)
    text = captioner.query(job).content[1]["text"]
    rule, exception = text.index("do not describe how the subjects look"), text.index("do state what that edit changed")
    assert rule < exception and '"make the dog red"' in text  # the exception comes after the rule it overrides
    plain = captioner.query(CaptionJob(job.image, job.subjects, job.prompt, None, 1)).content[1]["text"]
    assert "edit" not in plain and plain.endswith('starts with "Caption:".')


def test_every_config_key_has_a_description():
    """README "Data": every key has a type, a default and a description in trainer/datagen/config.py."""
    from pydantic import BaseModel

    def undocumented(model: type[BaseModel], prefix: str = "") -> list[str]:
        out = []
        for name, info in model.model_fields.items():
            if not (info.description or "").strip():
                out.append(prefix + name)
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                out += undocumented(info.annotation, f"{prefix}{name}.")
        return out

    assert undocumented(DatagenConfig) == []


def test_relative_model_paths_follow_the_project_rule(tmp_path, monkeypatch):
    """README "Data": relative model paths start at the config's folder (``--set`` ones at the current folder)."""
    from trainer.datagen.config import resolve_model_paths

    for folder in ("configs/models/t2i", "elsewhere/models/t2i"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "configs" / "cats.txt").write_text("dog\ncup\n")
    config = tmp_path / "configs" / "d.yaml"
    config.write_text(json.dumps({"filters": {"server": "http://127.0.0.1:1"}, "t2i": {"model": "models/t2i"},
                                  "categories": "cats.txt", "references": {"model": "org/kontext"}}))
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = resolve_model_paths(load_config(DatagenConfig, config))
    assert cfg.t2i.model == str(tmp_path / "configs" / "models" / "t2i")  # not elsewhere/models/t2i
    assert cfg.categories == str(tmp_path / "configs" / "cats.txt") and cfg.references.model == "org/kontext"
    assert resolve_model_paths(load_config(DatagenConfig, config, ["t2i.model=models/t2i"])).t2i.model == \
        str(tmp_path / "elsewhere" / "models" / "t2i")
