"""psr datagen end to end on the tiny models of ``psr make-tiny``, with its filters scored by a real
``psr serve`` process: the output trains (GRPO, 2 steps) and loads in PSRBench; a killed run
resumes to the same data; shards merge to the same data; every drop reason is recorded."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from shared.config import ConfigError, load_config
from tests.servers import REPO, psr_command, repo_env, server_process, wait_for
from trainer.datagen.config import DatagenConfig
from trainer.datagen.runner import RunOptions, run_datagen
from trainer.dataset import SFT_RULES, load_dataset, load_image

pytestmark = pytest.mark.slow
ITEMS = 6


@pytest.fixture(scope="module")
def tiny(tiny_config: Path) -> Path:
    """The folder ``psr make-tiny`` wrote (with ``datagen.yaml``)."""
    return tiny_config.parent


@pytest.fixture(scope="module")
def server(tiny_config: Path):
    with server_process(tiny_config, "--rewards", "aesthetic,dino_i,brightness,position") as url:  # brightness: psr train
        yield url


def datagen(tiny: Path, server: str, out: Path, *overrides: str, **options) -> dict:
    """``psr datagen`` in this process on the tiny config."""
    config = tiny / "datagen.yaml"
    cfg = load_config(DatagenConfig, config, [f"filters.server={server}", *overrides])
    options.setdefault("limit", ITEMS)
    return run_datagen(cfg, RunOptions(out=out, progress=False, **options))


@pytest.fixture(scope="module")
def reference(tiny, server, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("datagen") / "single"
    return out, datagen(tiny, server, out)


def entries(folder: Path) -> list[dict]:
    return json.loads((folder / "dataset.json").read_text())


def assert_same_data(folder: Path, expected: Path) -> None:
    """Same items in the same order with the same fields, and pixel-identical images."""
    got, want = entries(folder), entries(expected)
    assert [e["id"] for e in got] == [e["id"] for e in want]
    for a, b in zip(got, want, strict=True):
        strip = ("input_path", "target_path", "provenance")
        assert {k: v for k, v in a.items() if k not in strip} == {k: v for k, v in b.items() if k not in strip}
        skip = ("source_target", "scores")
        assert {k: v for k, v in a["provenance"].items() if k not in skip} == \
            {k: v for k, v in b["provenance"].items() if k not in skip}
        # the service batches requests differently in each run: scores agree to float rounding
        sa, sb = a["provenance"]["scores"], b["provenance"]["scores"]
        assert sa["aesthetic"] == pytest.approx(sb["aesthetic"], abs=1e-5)
        assert sa["identity"] == pytest.approx(sb["identity"], abs=1e-5) and sa["detection"] == sb["detection"]
        for pa, pb in zip([*a["input_path"], a["target_path"]], [*b["input_path"], b["target_path"]], strict=True):
            assert (load_image(folder / pa) == load_image(expected / pb)).all(), (pa, pb)


def test_output_trains_and_benchmarks(reference, tiny, server, tmp_path):
    from trainer.config import DataConfig, tiny_run_config
    from trainer.evaluation.dataset import load_bench
    from trainer.rollout import load_items
    from trainer.train import run_training

    out, summary = reference
    assert summary["items"] == ITEMS and summary["kept"] == ITEMS and summary["pending"] == 0
    assert all(s["kept"] == ITEMS and s["seconds"] >= 0 for s in summary["stages"].values())
    assert json.loads((out / "summary.json").read_text())["kept"] == ITEMS

    root, sft = load_dataset(out, SFT_RULES)  # SFT's rules: references, categories and target files exist
    assert root == out and len(sft) == ITEMS
    first = sft[0].raw
    assert first["id"] == "s0-0000000" and first["input_path"][0].startswith("images/references/")
    prov = first["provenance"]
    assert set(prov["models"]) >= {"writer", "t2i", "detector", "references", "edit", "caption",
                                   "reward:aesthetic", "reward:dino_i"}
    assert isinstance(prov["scores"]["aesthetic"], float) and len(prov["scores"]["identity"]) == len(sft[0].categories)
    assert isinstance(prov["seeds"]["t2i"], int)
    # the filter scores in the provenance are the service's scores of those very images: the
    # target's aesthetic, the edited target's, and each reference's similarity to its crop
    from shared.client import RewardClient

    edited = next(it.raw for it in sft if it.raw["provenance"]["edit"])
    scores, image = edited["provenance"]["scores"], lambda rel: load_image(out / rel)
    detect = {r["id"]: r for r in map(json.loads, (out / "manifests" / "detect.jsonl").read_text().splitlines())}
    subjects = [[(edited[f"category{j + 1}"], image(crop))] for j, crop in enumerate(detect[edited["id"]]["crops"])]
    with RewardClient(server, image_format="raw") as client:
        aesthetic = client.score([image(edited["provenance"]["source_target"]), image(edited["target_path"])],
                                 {"aesthetic": 1.0}).scores["aesthetic"]
        identity = client.score([image(p) for p in edited["input_path"]], {"dino_i": 1.0},
                                subjects=subjects).scores["dino_i"]
    assert [scores["aesthetic"], scores["edit_aesthetic"]] == pytest.approx(list(aesthetic), abs=1e-4)
    assert scores["identity"] == pytest.approx(list(identity), abs=1e-4)
    assert len(scores["edit_detection"]) == len(edited["input_path"])

    grpo = load_items(DataConfig(file=str(out)), tmp_path)
    assert len(grpo) == ITEMS and all(len(p.references) == len(p.categories) >= 2 for p in grpo)
    bench = load_bench(out)
    assert sorted((b.subset, b.instruction) for b in bench) == sorted((it.task.title(), it.instruction) for it in sft)

    from PIL import Image

    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.height > ITEMS * 96 and sheet.width > 4 * 96

    cfg = tiny_run_config(
        tiny / "generator", server, tmp_path / "run",
        [f"data.file={out}", "data.prompts=[]", "run.steps=2", "sampling.group_size=2",
         "sampling.prompts_per_batch=2", "sampling.batches_per_step=1", "optim.train_batch_size=4",
         "run.save_every=2", "run.image_every=100"],
    )
    result = run_training(cfg, progress=False)
    assert result["steps"] == [1, 2] and all(r == r for r in result["reward_mean"])
    assert (Path(result["checkpoint"]) / "lora.safetensors").is_file()


def manifest_ids(folder: Path, stage: str) -> list[str]:
    lines = (folder / "manifests" / f"{stage}.jsonl").read_text().splitlines()
    return [json.loads(line)["id"] for line in lines if line.strip()]


def test_a_run_killed_mid_stage_resumes_to_the_same_data(reference, tiny, server, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        psr_command("datagen", "--config", str(tiny / "datagen.yaml"), "--out", str(out), "--limit", str(ITEMS),
                    "--no-progress", "--set", f"filters.server={server}", "--set", "t2i.batch_size=1"),
        cwd=REPO, env=repo_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    targets = out / "manifests" / "targets.jsonl"
    try:
        wait_for(lambda: targets.is_file() and len(targets.read_text().splitlines()) >= 2, 120, "targets", proc,
                 every=0.005)
        os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up: as if the machine died
    finally:
        proc.kill()
        proc.wait()
    done = manifest_ids(out, "targets")
    assert 2 <= len(done) < ITEMS and not (out / "dataset.json").exists(), "the kill did not land inside the stage"
    # what a kill in the middle of writing leaves: a half-written image and a torn manifest line
    (out / "images" / "targets" / "0000" / "s0-0000005.png.tmp").write_bytes(b"\x89PNG\r\n half")
    with open(targets, "a") as f:
        f.write('{"id": "s0-0000005", "index": 5, "sta')

    summary = datagen(tiny, server, out, resume=True)

    assert summary["kept"] == ITEMS and not list(out.rglob("*.tmp"))
    for stage in summary["stages"]:
        ids = manifest_ids(out, stage)
        assert len(ids) == len(set(ids)) == ITEMS, stage  # nothing twice, nothing lost
    assert manifest_ids(out, "targets")[: len(done)] == done  # finished work was kept, not redone
    assert_same_data(out, reference[0])  # batch size 1 and an interruption change nothing

    # each filtering stage records the versions the service reported; a resume against a service
    # hosting other versions (another deployment, a new checkpoint) is refused, not mixed in
    import httpx

    hosted = {r["name"]: r["version"] for r in httpx.get(f"{server}/v1/rewards").json()["rewards"]}
    doc = json.loads((out / "run.json").read_text())
    assert doc["stages"]["targets"]["rewards"] == {"aesthetic": hosted["aesthetic"]}
    assert doc["stages"]["references"]["rewards"] == {"dino_i": hosted["dino_i"]}
    doc["stages"]["references"]["rewards"] = {"dino_i": "image_similarity/1:another-dino@0000000000"}
    (out / "run.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"stage references .* was filtered by the reward version"):
        datagen(tiny, server, out, resume=True)


def test_shards_are_disjoint_and_merge_to_the_single_run(reference, tiny, server, tmp_path, capsys):
    from shared.cli import main

    out = tmp_path / "sharded"
    datagen(tiny, server, out, shard=(1, 2), stages=["prompts", "write"])  # shard 1 stops after its prompts
    datagen(tiny, server, out, shard=(0, 2))
    assert main(["datagen", "merge", str(out)]) == 2
    assert "shard-00001-of-00002 has 3 pending item(s)" in capsys.readouterr().err
    parts = [json.loads((out / "shard-00000-of-00002" / "summary.json").read_text()),
             datagen(tiny, server, out, shard=(1, 2), resume=True)]
    folders = sorted(out.glob("shard-*"))
    assert [f.name for f in folders] == ["shard-00000-of-00002", "shard-00001-of-00002"]
    ids = [{e["id"] for e in entries(f)} for f in folders]
    assert not ids[0] & ids[1] and len(ids[0] | ids[1]) == ITEMS
    assert sum(p["items"] for p in parts) == ITEMS

    assert main(["datagen", "merge", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"merged 2 shard(s): {ITEMS} items, {ITEMS} kept" in printed
    assert_same_data(out, reference[0])
    assert entries(out)[0]["target_path"].startswith("shard-00000-of-00002/images/")
    load_dataset(out, SFT_RULES)

    elsewhere = tmp_path / "merged"  # shards outside the merged folder: their images are brought in
    assert main(["datagen", "merge", str(folders[0]), str(folders[1]), "--out", str(elsewhere)]) == 0
    assert_same_data(elsewhere, reference[0])
    assert main(["datagen", "merge", str(folders[1]), "--out", str(tmp_path / "half")]) == 2
    assert "shard(s) 0/2 are missing" in capsys.readouterr().err
    # a stage redone after the shard wrote its dataset: that dataset.json is stale until written again
    datagen(tiny, server, out, shard=(1, 2), stages=["caption"], rerun=True)
    assert main(["datagen", "merge", str(out)]) == 2
    assert "has records newer than its dataset.json" in capsys.readouterr().err


def stage_drops(summary: dict, stage: str) -> dict:
    return summary["stages"][stage]["dropped"]


def test_every_drop_reason_is_recorded(tiny, server, tmp_path):
    from tests.chat_server import running_chat_server
    from trainer.datagen.text import EndpointUnavailable

    n = {"limit": 3}  # a complex, a three-subject and a position item
    # language models that write garbage (the tiny random LM and VLM): unparseable
    garbage = datagen(tiny, server, tmp_path / "lm", "writer.kind=transformers", stages=["prompts"], **n)
    assert stage_drops(garbage, "prompts") == {"unparseable": 3}
    record = json.loads((tmp_path / "lm" / "manifests" / "prompts.jsonl").read_text().splitlines()[0])
    assert record["status"] == "dropped" and "no 'Prompt:' line" in record["message"]

    # an OpenAI-compatible endpoint: answers that name every subject, then answers that do not
    edits = {task: "ANSWER=Edit: recolour the {subjects}|" for task in ("attribute", "action", "background", "complex")}
    with running_chat_server() as (fake, url):  # it answers with the text after ANSWER= in the request
        endpoint = ["writer.kind=openai", f"writer.endpoint={url}/", "writer.model=fake", "writer.temperature=0.9",
                    f"writer.edit_instructions={json.dumps(edits)}"]
        named = datagen(tiny, server, tmp_path / "ep", *endpoint, "writer.scene_instruction='ANSWER=Prompt: {subjects}|'",
                        stages=["prompts"], **n)
        assert named["stages"]["prompts"]["kept"] == 3
        seeds = [b["seed"] for b in fake.bodies]
        assert len(seeds) == len(set(seeds)) >= 3 and all(b["temperature"] == 0.9 for b in fake.bodies)
        missing = datagen(tiny, server, tmp_path / "ep2", *endpoint,
                          "writer.scene_instruction='ANSWER=Prompt: an empty room|{subjects}'", stages=["prompts"], **n)
        assert stage_drops(missing, "prompts") == {"missing_subject": 3}
        # a misconfigured endpoint is no drop: no answer could succeed, so the run stops on one line
        scene = "writer.scene_instruction='ANSWER=Prompt: {subjects}|'"
        for overrides, message in [
            (["writer.model=qwen"], "does not serve the model 'qwen' (it serves fake)"),
            ([f"writer.endpoint={url.removesuffix('/v1')}"], "answered HTTP 404: is the base URL right"),
            (["writer.scene_instruction='FAIL=99x404 ANSWER=Prompt: {subjects}|'"], "endpoint answered HTTP 404"),
        ]:
            with pytest.raises(EndpointUnavailable, match=re.escape(message)):
                datagen(tiny, server, tmp_path / "ep3", *endpoint, scene, *overrides, stages=["prompts"], resume=True, **n)
        assert not manifest_ids(tmp_path / "ep3", "prompts")  # nothing recorded as dropped

    # one folder, each later stage redone (--rerun) with settings that drop everything for one reason
    out = tmp_path / "rules"
    steps = [
        (["prompts", "targets"], ["filters.aesthetic_floor=1e9"], "targets", "aesthetic_low"),
        (["targets"], ["filters.aesthetic_reward=position"], "targets", "score_failed"),  # no relation: null
        (["targets", "detect"], ["detect.detector.box_threshold=1.0"], "detect", "not_detected"),
        (["detect"], ["detect.detector.max_per_category=5"], "detect", "detected_twice"),
        (["detect"], ["detect.min_box_area=0.5"], "detect", "box_too_small"),
        (["detect", "references"], ["filters.identity_floor=0.999"], "references", "identity_lost"),
        (["references"], ["filters.identity_floor=-1", "filters.copy_paste_ceiling=-0.5"], "references", "copy_paste"),
        (["references", "edit", "caption"], ["caption.kind=transformers"], "caption", "unparseable"),
    ]
    for stages, overrides, stage, reason in steps:
        summary = datagen(tiny, server, out, *overrides, stages=stages, rerun=True, **n)
        drops = stage_drops(summary, stage)
        assert set(drops) == {reason}, (stage, reason, summary["stages"][stage])
        records = [json.loads(line) for line in (out / "manifests" / f"{stage}.jsonl").read_text().splitlines()]
        assert all(r["message"] for r in records if r["status"] == "dropped")
    assert drops == {"unparseable": 2}  # the position item's instruction comes from its boxes, not the VLM


def test_bad_input_is_one_clear_line(tiny, server, tmp_path, capsys):
    import socket

    from shared.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed

    def fails(*args: str, out: str = "bad") -> str:
        code = main(["datagen", "--config", str(tiny / "datagen.yaml"), "--out", str(tmp_path / out), "--no-progress",
                     "--limit", "2", "--set", f"filters.server={server}", *args])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "Traceback" not in err, err
        return err.splitlines()[-1]

    assert "t2i.model: local path /no/such/t2i does not exist" in fails("--set", "t2i.model=/no/such/t2i")
    (tmp_path / "a-file").write_text("")
    assert fails(out="a-file").startswith(f"psr datagen: --out {tmp_path / 'a-file'}: cannot create the run folder")
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as offline:  # a typo of a local folder looks like a hub id
        offline.setattr(constants, "HF_HUB_OFFLINE", True)
        line = fails("--set", "references.model=modls/generator", out="typo")
    assert line.startswith("psr datagen: references.model: modls/generator is not a local folder")
    assert not (tmp_path / "typo" / "run.json").exists()  # found before any work
    assert "category list is empty" in fails("--set", "categories=[]")
    assert "writer.endpoint" in fails("--set", "writer.kind=openai", "--set", "writer.model=m",
                                      "--set", f"writer.endpoint={closed}/v1", out="ep")
    assert not (tmp_path / "ep" / "run.json").exists()  # checked before anything was written: rerun as is
    assert main(["datagen", "--config", str(tiny / "datagen.yaml"), "--out", str(tmp_path / "rewards"), "--limit", "2",
                 "--no-progress", "--stages", "prompts", "--set", f"filters.server={closed}"]) == 0
    capsys.readouterr()
    line = fails("--resume", "--set", f"filters.server={closed}", out="rewards")  # checked before any work
    assert "filters.server" in line and "unreachable" in line
    assert len(manifest_ids(tmp_path / "rewards", "prompts")) == 2  # the finished stage stays recorded
    assert "already holds a run" in fails(out="rewards")
    assert "needs the records of stage targets" in fails("--stages", "detect", out="fresh")
    assert "--stages: unknown stage" in fails("--stages", "paint", out="fresh")
    assert "was made with other settings" in fails("--resume", "--set", "writer.places=[somewhere]", out="rewards")

    # a checkpoint of the wrong kind (a text LM as the re-captioner) fails in its own way: one line too
    from trainer.datagen.manifest import RunFolder
    from trainer.datagen.stage2 import CaptionStage
    from trainer.datagen.stages import StageContext

    cfg = load_config(DatagenConfig, tiny / "datagen.yaml",
                      [f"filters.server={server}", "caption.kind=transformers", f"caption.model={tiny / 'lm'}"])
    with pytest.raises(ConfigError, match=r"^caption.model: cannot load .*lm: "):
        CaptionStage(StageContext(cfg, RunFolder(tmp_path / "vlm"))).load()
