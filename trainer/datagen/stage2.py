"""The paper's stage 2 -- task diversity: the target edited for attribute/action/background/complex
items, position items described by their boxes, and every target re-captioned without the
subjects' appearance (instructions name subjects by category; the references carry the looks)."""

from __future__ import annotations

from trainer.datagen.categories import derive_seed
from trainer.datagen.config import EDIT_TASKS
from trainer.datagen.filters import check_boxes, position_instruction, relation_of
from trainer.datagen.models import device_of, dtype_of, load_detector, load_generator, loading
from trainer.datagen.records import dropped, kept
from trainer.datagen.stage1 import aesthetic_record
from trainer.datagen.stages import Item, Stage
from trainer.datagen.text import Captioner, CaptionJob, read_answer, require_reachable


class EditStage(Stage):
    """Edit tasks: the editing model (one reference: the target) follows the edit instruction; the
    result passes the aesthetic floor and, with ``edit.check_subjects``, shows every subject once.
    Position items get their relation from the target's boxes; three/four items pass unchanged."""

    name, needs = "edit", "references"

    @property
    def batch_size(self) -> int:
        return self.cfg.edit.batch_size

    def load(self) -> None:
        self.filters = self.ctx.filters()
        self.generate = load_generator(self.cfg.edit, "edit")
        self.detector = load_detector(self.cfg.detect) if self.cfg.edit.check_subjects else None

    def process(self, items: list[Item]) -> list[Item]:
        editing = [it for it in items if it["task"] in EDIT_TASKS]
        records = {it["id"]: self._unedited(it) for it in items if it["task"] not in EDIT_TASKS}
        if editing:
            targets = [self.run.load_image(it["target"]) for it in editing]
            seeds = [derive_seed(it["seed"], "edit") for it in editing]
            images = self.generate([it["edit"] for it in editing], [[t] for t in targets], seeds)
            paths = [self.run.save_image(self.run.image_relpath("edited", it["id"], it["index"]), img)
                     for it, img in zip(editing, images, strict=True)]
            scores = self.filters.aesthetic(images, [it["edit"] for it in editing])
            checks = self._check_subjects(editing, images)
            for item, score, path, seed, check in zip(editing, scores, paths, seeds, checks, strict=True):
                fields = dict(final_target=path, edited=True, edit_seed=seed)
                if check is not None and check.reason:
                    records[item["id"]] = dropped(item, check.reason, f"after the edit: {check.message}", **fields)
                    continue
                if check is not None:
                    fields["edit_box_scores"] = check.scores
                # its own key: the target's aesthetic score stays in the item's provenance
                records[item["id"]] = aesthetic_record(self.cfg.filters, item, score, key="edit_aesthetic", **fields)
        return [records[it["id"]] for it in items]

    def _unedited(self, item: Item) -> Item:
        if item["task"] == "position":
            relation = relation_of(item["boxes"][0], item["boxes"][1])
            return kept(item, final_target=item["target"], edited=False,
                        relation={"subject": item["categories"][0], "relation": relation,
                                  "object": item["categories"][1]})
        return kept(item, final_target=item["target"], edited=False)

    def _check_subjects(self, items: list[Item], images) -> list:
        if self.detector is None:
            return [None] * len(items)
        found = self.detector.detect(images, [it["categories"] for it in items])
        return [check_boxes(f, it["categories"], img.shape[0], img.shape[1], self.cfg.detect.min_box_area)
                for it, img, f in zip(items, images, found, strict=True)]


class CaptionStage(Stage):
    """The final instruction: the re-captioner's description of the target (naming every subject),
    or, for position items, "a A <relation> a B" from the boxes (exactly what the position reward reads)."""

    name, needs = "caption", "edit"

    @property
    def batch_size(self) -> int:
        return self.cfg.caption.batch_size

    def load(self) -> None:
        cfg = self.cfg.caption
        if cfg.kind == "transformers":
            device = device_of(cfg)
            with loading("caption.model", cfg.model):
                self.captioner = Captioner(cfg, device, dtype_of(cfg, device))
        else:
            self.captioner = Captioner(cfg)
            if self.captioner.endpoint is not None:
                require_reachable(self.captioner.endpoint, "caption")

    def process(self, items: list[Item]) -> list[Item]:
        records = {}
        for item in items:
            if item["task"] == "position":
                rel = item["relation"]
                records[item["id"]] = kept(item, instruction=position_instruction(rel["subject"], rel["object"],
                                                                                  rel["relation"]))
        rest = [it for it in items if it["id"] not in records]
        jobs = [CaptionJob(self.run.load_image(it["final_target"]), it["categories"], it["prompt"],
                           it["edit"] if it.get("edited") else None, derive_seed(it["seed"], "caption")) for it in rest]
        for item, answer in zip(rest, self.captioner.answers(jobs) if jobs else [], strict=True):
            text, reason, message = read_answer(answer, "caption", item["categories"], name_all=True)
            if text is None:
                records[item["id"]] = dropped(item, reason, message, answer=(answer.text or "")[:300])
            else:
                records[item["id"]] = kept(item, instruction=text)
        return [records[it["id"]] for it in items]
