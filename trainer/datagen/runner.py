"""Run the stages over a run's items: ordering, resume, ``--rerun``, shards, ``--limit``, progress, timings.

Items are processed stage by stage (all prompts, then all targets, ...), so one stage's models
are in memory at a time. A stage's input is the items the previous stage kept; its pending items
are those without a record in its manifest. ``run.json`` holds the run's seed, shard, categories
and, per stage, the settings its records were made with: resuming with other settings is refused
(``--rerun`` redoes the stage and everything after it).
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shared.config import ConfigError, config_hash
from trainer.datagen.categories import check_enough, load_categories, plan_item, shard_indices
from trainer.datagen.config import (
    STAGE_REWARDS,
    STAGE_SETTINGS,
    DatagenConfig,
    resolve_model_paths,
    stage_hashes,
    stage_settings,
)
from trainer.datagen.manifest import IMAGES, RunFolder
from trainer.datagen.models import check_hub_models, check_model_paths, model_versions
from trainer.datagen.records import KEPT
from trainer.datagen.stage1 import DetectStage, PromptsStage, ReferencesStage, TargetsStage
from trainer.datagen.stage2 import CaptionStage, EditStage
from trainer.datagen.stages import Item, Stage, StageContext, chunks

log = logging.getLogger(__name__)

STAGE_CLASSES: list[type[Stage]] = [PromptsStage, TargetsStage, DetectStage, ReferencesStage, EditStage, CaptionStage]
ITEM_STAGES = [c.name for c in STAGE_CLASSES]
STAGES = [*ITEM_STAGES, "write"]
STAGE_IMAGES = {"targets": "targets", "detect": "crops", "references": "references", "edit": "edited"}
RUN_FORMAT = 1
_NOT_STATE = frozenset({"id", "index", "status", "reason", "message"})


@dataclass
class RunOptions:
    """Command-line choices of one ``psr datagen`` invocation."""

    out: Path
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    shard: tuple[int, int] = (0, 1)
    resume: bool = False
    rerun: bool = False
    limit: int | None = None
    progress: bool = True


def parse_stages(text: str) -> list[str]:
    """``"all"`` or a comma list of stage names; returned in pipeline order."""
    if text.strip() == "all":
        return list(STAGES)
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown or not names:
        raise ConfigError(f"--stages: unknown stage(s) {unknown or [text]}; stages are {', '.join(STAGES)} (or all)")
    return [s for s in STAGES if s in names]


def shard_folder(out: Path, shard: tuple[int, int]) -> Path:
    """Where a shard writes: ``OUT/shard-IIIII-of-NNNNN`` (``OUT`` itself when not sharded)."""
    index, count = shard
    return out if count == 1 else out / f"shard-{index:05d}-of-{count:05d}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class DatagenRun:
    """One invocation over one run folder (a whole run, or one shard of it)."""

    def __init__(self, raw: DatagenConfig, opts: RunOptions):
        self.raw, self.opts = raw, opts
        self.cfg = resolve_model_paths(raw)
        self.categories = load_categories(self.cfg.categories)
        check_enough(self.categories, raw.tasks)
        self.run = RunFolder(shard_folder(opts.out, opts.shard))
        self.hashes = stage_hashes(raw, self.categories, ITEM_STAGES)
        self.total = min(raw.items, opts.limit) if opts.limit is not None else raw.items
        plans = [plan_item(raw.seed, i, self.categories, raw.tasks) for i in shard_indices(self.total, opts.shard)]
        self.planned: dict[str, Item] = {p.id: p.record() for p in plans}
        self.records: dict[str, dict[str, Item]] = {}
        self.doc: dict[str, Any] = {}
        self.discarding: list[str] = []

    def execute(self) -> dict[str, Any]:
        """Run the selected stages; returns the summary (also written to ``summary.json``)."""
        from reward_server.models.device import torch_threads
        from trainer.datagen.report import summarise, write_outputs

        with self.run.locked(), torch_threads(self.raw.cpu_threads):
            self._open_run()  # checks only: nothing is written before every check passed
            problems = (check_model_paths(self.cfg, self.opts.stages, self.raw.source)
                        or check_hub_models(self.cfg, self.opts.stages))
            if problems:
                raise ConfigError("; ".join(problems))
            ctx = StageContext(self.cfg, self.run, self.doc["models"])
            started = False
            try:
                self._preflight(ctx)
                self._check_reward_versions(ctx)
                self._discard()
                self.run.remove_partial_files()
                self.run.write_run(self.doc)
                started = True
                for cls in STAGE_CLASSES:
                    if cls.name in self.opts.stages:
                        self._run_stage(cls(ctx))
            finally:
                ctx.close()  # the reward versions it used join self.doc["models"]
                if started:
                    self.run.write_run(self.doc)
            self._read_all()
            if "write" in self.opts.stages:
                self.doc["models"].update(model_versions(self.cfg))  # hub models downloaded meanwhile: their commits
                write_outputs(self)
                self.doc["dataset_current"] = True
                self.run.write_run(self.doc)
            return summarise(self)

    def _records_change(self) -> None:
        """Mark ``dataset.json`` out of date (on disk, before any record changes): merge refuses it."""
        if self.doc.get("dataset_current", True):
            self.doc["dataset_current"] = False
            self.run.write_run(self.doc)

    def _preflight(self, ctx: StageContext) -> None:
        """Reach every endpoint and the reward service the selected stages use: fail in seconds, not hours."""
        from trainer.datagen.text import chat_endpoint, require_reachable

        stages = self.opts.stages
        for key, section, stage in (("writer", self.cfg.writer, "prompts"), ("caption", self.cfg.caption, "caption")):
            if stage in stages and section.kind == "openai":
                require_reachable(chat_endpoint(section, key), key)
        if {"targets", "references", "edit"} & set(stages):
            ctx.filters()  # checks that the service answers and hosts the configured rewards

    # -- run.json -------------------------------------------------------------------------------
    def _open_run(self) -> None:
        doc = self.run.read_run()
        identity = {"seed": self.raw.seed, "shard": list(self.opts.shard), "categories": config_hash(self.categories)}
        if doc is None:
            self.doc = {"format": RUN_FORMAT, "created": _now(), **identity, "run_hash": self.hashes[ITEM_STAGES[-1]],
                        "config": self.raw.model_dump(mode="json"), "stages": {}}
        else:
            if not self.opts.resume and not self.opts.rerun:
                raise ConfigError(f"{self.run.root} already holds a run (created {doc.get('created')}): pass --resume "
                                  "to continue it, --rerun --stages ... to redo stages, or choose another --out")
            changed = [k for k, v in identity.items() if doc.get(k) != v]
            if changed:
                raise ConfigError(f"{self.run.root} holds a run with other {', '.join(changed)} "
                                  f"({', '.join(f'{k}={doc.get(k)!r}' for k in changed)}); use another --out")
            self.doc = doc
        selected = [s for s in ITEM_STAGES if s in self.opts.stages]
        # --rerun: the first selected stage and every later one are made again
        self.discarding = ITEM_STAGES[ITEM_STAGES.index(selected[0]):] if self.opts.rerun and selected else []
        for stage in ITEM_STAGES:
            self._check_settings(stage)
        self.doc["run_hash"] = self.hashes[ITEM_STAGES[-1]]
        self.doc["total_items"] = self.total
        self.doc["config"] = self.raw.model_dump(mode="json")
        earlier = {k: v for k, v in self.doc.get("models", {}).items() if k.startswith("reward:")}
        self.doc["models"] = {**model_versions(self.cfg), **earlier}

    def _check_reward_versions(self, ctx: StageContext) -> None:
        """Records of a stage were filtered with the rewards' versions then: resume only with the same ones."""
        for stage, keys in STAGE_REWARDS.items():
            if stage not in self.opts.stages:
                continue
            now = ctx.filters().hosted_versions(keys)
            info = self.doc["stages"][stage]
            before = info.get("rewards")
            manifest = self.run.manifest(stage).path
            has_records = manifest.is_file() and manifest.stat().st_size > 0 and stage not in self.discarding
            if has_records and before is not None and before != now:
                raise ConfigError(f"stage {stage} in {self.run.root} was filtered by the reward version(s) {before}; "
                                  f"the service at {self.cfg.filters.server} hosts {now}: point filters.server at the "
                                  f"deployment the run used, or redo the stage with --rerun --stages {stage}")
            info["rewards"] = now

    def _discard(self) -> None:
        """``--rerun``: delete the records and images of the stages being made again."""
        if self.discarding:
            self._records_change()
        for stage in self.discarding:
            self.run.manifest(stage).path.unlink(missing_ok=True)
            if stage in STAGE_IMAGES:
                shutil.rmtree(self.run.root / IMAGES / STAGE_IMAGES[stage], ignore_errors=True)
            log.info("--rerun: discarded the records of stage %s", stage)

    def _check_settings(self, stage: str) -> None:
        info = self.doc["stages"].get(stage)
        if info is None or stage in self.discarding or not self.run.manifest(stage).exists():
            self.doc["stages"][stage] = {"hash": self.hashes[stage], "settings": stage_settings(self.raw, stage),
                                         "seconds": 0.0, "load_seconds": 0.0, "processed": 0}
            return
        if info["hash"] != self.hashes[stage]:
            now = stage_settings(self.raw, stage)
            changed = [k for k in STAGE_SETTINGS[stage] if info.get("settings", {}).get(k) != now.get(k)]
            why = f"its settings changed ({', '.join(changed)})" if changed else "an earlier stage's settings changed"
            raise ConfigError(f"stage {stage} in {self.run.root} was made with other settings: {why}; "
                              f"redo it with --rerun --stages {stage} (it and every later stage are made again)")

    # -- stages ---------------------------------------------------------------------------------
    def _read_all(self) -> None:
        for stage in ITEM_STAGES:
            manifest = self.run.manifest(stage)
            self.records[stage] = {k: v for k, v in manifest.read().items() if k in self.planned}

    def state(self, item_id: str, upto: str) -> Item:
        """Everything recorded about an item by the stages before ``upto``."""
        merged = dict(self.planned[item_id])
        for stage in ITEM_STAGES[: ITEM_STAGES.index(upto)]:
            merged.update({k: v for k, v in self.records[stage][item_id].items() if k not in _NOT_STATE})
        return merged

    def available(self, stage: str) -> list[str]:
        """Ids of the items ``stage`` takes: every planned item, or those the stage before it kept."""
        index = ITEM_STAGES.index(stage)
        if index == 0:
            return list(self.planned)
        before = self.records[ITEM_STAGES[index - 1]]
        return [i for i in self.planned if before.get(i, {}).get("status") == KEPT]

    def inputs(self, stage: Stage) -> list[str]:
        """``available``, after checking that the stage before has run (warning about items it has not done)."""
        if stage.needs is not None:
            if not self.run.manifest(stage.needs).exists():
                raise ConfigError(f"stage {stage.name} needs the records of stage {stage.needs}: run it first "
                                  f"(--stages {stage.needs},{stage.name})")
            waiting = [i for i in self.available(stage.needs) if i not in self.records[stage.needs]]
            if waiting:
                log.warning("stage %s: %d item(s) are still pending in stage %s and wait for it", stage.name,
                            len(waiting), stage.needs)
        return self.available(stage.name)

    def _run_stage(self, stage: Stage) -> None:
        from tqdm import tqdm

        self._read_all()
        manifest = self.run.manifest(stage.name)
        ids = self.inputs(stage)
        manifest.touch()
        manifest.repair()
        done = self.records[stage.name]
        pending = [i for i in ids if i not in done]
        info = self.doc["stages"][stage.name]
        bar = tqdm(total=len(ids), initial=len(ids) - len(pending), desc=f"{stage.name:<10}", unit="item",
                   disable=not self.opts.progress, file=sys.stderr, dynamic_ncols=True)
        dropped = sum(r["status"] != KEPT for r in done.values())
        try:
            if pending:
                self._records_change()
                start = time.perf_counter()
                stage.load()
                stage.loaded = True
                info["load_seconds"] += time.perf_counter() - start
            for batch in chunks(pending, stage.batch_size):
                start = time.perf_counter()
                records = stage.run_batch([self.state(i, stage.name) for i in batch])
                manifest.append(records)
                dropped += sum(r["status"] != KEPT for r in records)
                bar.set_postfix(dropped=dropped, refresh=False)
                info["seconds"] += time.perf_counter() - start
                info["processed"] += len(batch)
                bar.update(len(batch))
        finally:
            bar.close()
            stage.close()
            self.run.write_run(self.doc)


def run_datagen(cfg: DatagenConfig, opts: RunOptions) -> dict[str, Any]:
    """Run ``opts.stages`` of the pipeline into ``opts.out``; returns the summary."""
    return DatagenRun(cfg, opts).execute()
