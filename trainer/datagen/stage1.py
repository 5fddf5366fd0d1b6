"""The paper's stage 1 -- subjects and targets: scene prompt, target image, subject boxes and crops,
and one reference per subject redrawn by a single-subject personalisation model."""

from __future__ import annotations

import random

from reward_server.models.preprocess import crop_boxes
from trainer.datagen.categories import derive_seed
from trainer.datagen.config import EDIT_TASKS
from trainer.datagen.filters import check_boxes, padded
from trainer.datagen.models import device_of, dtype_of, load_detector, load_generator, load_t2i, loading
from trainer.datagen.records import dropped, kept
from trainer.datagen.stages import Item, Stage, chunks, square
from trainer.datagen.text import (
    CausalLMWriter,
    EndpointWriter,
    TemplateWriter,
    WriteJob,
    read_answer,
    require_reachable,
)


class PromptsStage(Stage):
    """The writer's scene prompt naming every subject, and the edit instruction of edit tasks."""

    name, needs = "prompts", None

    @property
    def batch_size(self) -> int:
        return self.cfg.writer.batch_size

    def load(self) -> None:
        cfg = self.cfg.writer
        if cfg.kind == "template":
            self.writer = TemplateWriter(cfg)
        elif cfg.kind == "openai":
            self.writer = EndpointWriter(cfg)
            require_reachable(self.writer.endpoint, "writer")
        else:
            device = device_of(cfg)
            with loading("writer.model", cfg.model):
                self.writer = CausalLMWriter(cfg, device, dtype_of(cfg, device))

    def process(self, items: list[Item]) -> list[Item]:
        jobs = [WriteJob("scene", it["categories"], derive_seed(it["seed"], "scene")) for it in items]
        records: dict[str, Item] = {}
        prompts: dict[str, str] = {}
        for item, answer in zip(items, self.writer.answers(jobs), strict=True):
            text, reason, message = read_answer(answer, "scene", item["categories"], name_all=True)
            if text is None:
                records[item["id"]] = dropped(item, reason, message, answer=(answer.text or "")[:300])
            else:
                prompts[item["id"]] = text
        editing = [it for it in items if it["id"] in prompts and it["task"] in EDIT_TASKS]
        edit_jobs = [WriteJob("edit", it["categories"], derive_seed(it["seed"], "edit"), it["task"], prompts[it["id"]])
                     for it in editing]
        edits: dict[str, str] = {}
        for item, answer in zip(editing, self.writer.answers(edit_jobs) if edit_jobs else [], strict=True):
            text, reason, message = read_answer(answer, "edit", item["categories"], name_all=False)
            if text is None:
                records[item["id"]] = dropped(item, reason, message, prompt=prompts[item["id"]],
                                              answer=(answer.text or "")[:300])
            else:
                edits[item["id"]] = text
        for item in items:
            if item["id"] not in records:
                records[item["id"]] = kept(item, task=item["task"], categories=item["categories"], seed=item["seed"],
                                           prompt=prompts[item["id"]], edit=edits.get(item["id"]))
        return [records[it["id"]] for it in items]


class TargetsStage(Stage):
    """The multi-subject target from the scene prompt (any diffusers pipeline); aesthetic floor."""

    name, needs = "targets", "prompts"

    @property
    def batch_size(self) -> int:
        return self.cfg.t2i.batch_size

    def load(self) -> None:
        self.filters = self.ctx.filters()
        self.t2i = load_t2i(self.cfg.t2i)

    def process(self, items: list[Item]) -> list[Item]:
        seeds = [derive_seed(it["seed"], "t2i") for it in items]
        images = self.t2i([it["prompt"] for it in items], seeds)
        paths = [self.run.save_image(self.run.image_relpath("targets", it["id"], it["index"]), img)
                 for it, img in zip(items, images, strict=True)]
        scores = self.filters.aesthetic(images, [it["prompt"] for it in items])
        return [aesthetic_record(self.cfg.filters, it, score, target=path, t2i_seed=seed)
                for it, score, path, seed in zip(items, scores, paths, seeds, strict=True)]


def aesthetic_record(filters_cfg, item: Item, score, key: str = "aesthetic", **fields) -> Item:
    """Kept, or dropped below the aesthetic floor (or when the service could not score it); the
    score is recorded under ``key``."""
    fields = {**fields, key: score.value}
    if filters_cfg.aesthetic_reward:
        if score.value is None:
            return dropped(item, "score_failed", f"aesthetic: {score.error}", **fields)
        if score.value < filters_cfg.aesthetic_floor:
            return dropped(item, "aesthetic_low",
                           f"aesthetic {score.value:.3f} < floor {filters_cfg.aesthetic_floor}", **fields)
    return kept(item, **fields)


class DetectStage(Stage):
    """Each subject found exactly once in the target (the reward server's detector); padded crops."""

    name, needs = "detect", "targets"

    @property
    def batch_size(self) -> int:
        return self.cfg.detect.batch_size

    def load(self) -> None:
        self.detector = load_detector(self.cfg.detect)

    def process(self, items: list[Item]) -> list[Item]:
        images = [self.run.load_image(it["target"]) for it in items]
        found = self.detector.detect(images, [it["categories"] for it in items])
        records = []
        for item, image, detections in zip(items, images, found, strict=True):
            height, width = image.shape[:2]
            check = check_boxes(detections, item["categories"], height, width, self.cfg.detect.min_box_area)
            if check.reason:
                records.append(dropped(item, check.reason, check.message))
                continue
            boxes = [padded(b, self.cfg.detect.crop_margin, height, width) for b in check.boxes]
            crops = [self.run.save_image(self.run.image_relpath("crops", item["id"], item["index"], j), crop)
                     for j, crop in enumerate(crop_boxes(image, boxes))]
            records.append(kept(item, boxes=[[round(v, 2) for v in b] for b in check.boxes],
                                box_scores=check.scores, crops=crops))
        return records


class ReferencesStage(Stage):
    """Each crop redrawn as the same subject in a new scene (the trainer's multi-reference pipeline
    with one reference); identity floor and copy-paste ceiling against the crop."""

    name, needs = "references", "detect"

    @property
    def batch_size(self) -> int:
        return self.cfg.references.batch_size

    def load(self) -> None:
        self.filters = self.ctx.filters()
        self.generate = load_generator(self.cfg.references, "references")

    def process(self, items: list[Item]) -> list[Item]:
        cfg = self.cfg.references
        jobs = []  # (item, j, prompt, seed, crop)
        for item in items:
            for j, (category, crop_path) in enumerate(zip(item["categories"], item["crops"], strict=True)):
                seed = derive_seed(item["seed"], "reference", j)
                place = random.Random(seed).choice(cfg.places)
                jobs.append((item, j, cfg.prompt.format(category=category, place=place), seed,
                             self.run.load_image(crop_path)))
        images = []
        for part in chunks(jobs, cfg.batch_size):
            images += self.generate([p for _, _, p, _, _ in part], [[square(c)] for *_, c in part],
                                    [s for _, _, _, s, _ in part])
        paths = [self.run.save_image(self.run.image_relpath("references", it["id"], it["index"], j), img)
                 for (it, j, *_), img in zip(jobs, images, strict=True)]
        scores = self.filters.identity(images, [it["categories"][j] for it, j, *_ in jobs], [c for *_, c in jobs])
        records, start = [], 0
        for item in items:
            n = len(item["categories"])
            mine = slice(start, start + n)
            start += n
            records.append(self._record(item, [j[2] for j in jobs[mine]], [j[3] for j in jobs[mine]],
                                        paths[mine], scores[mine]))
        return records

    def _record(self, item: Item, prompts, seeds, paths, scores) -> Item:
        filters = self.cfg.filters
        values = [s.value for s in scores]
        fields = dict(references=paths, identity=values, reference_prompts=prompts, reference_seeds=seeds)
        if filters.identity_reward:
            for category, score in zip(item["categories"], scores, strict=True):
                if score.value is None:
                    return dropped(item, "score_failed", f"identity of {category!r}: {score.error}", **fields)
                if score.value < filters.identity_floor:
                    return dropped(item, "identity_lost", f"the {category!r} reference has similarity "
                                   f"{score.value:.3f} < floor {filters.identity_floor}", **fields)
                if score.value > filters.copy_paste_ceiling:
                    return dropped(item, "copy_paste", f"the {category!r} reference has similarity "
                                   f"{score.value:.3f} > ceiling {filters.copy_paste_ceiling}", **fields)
        return kept(item, **fields)
