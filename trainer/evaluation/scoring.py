"""Score PSRBench results through the reward service: one JSONL record per item, resumable.

Each subset is scored with four dimensions, each computed by a configured server reward:
subject consistency (our one-to-one protocol, and the paper's protocol as a second reward),
semantic alignment (the judge, or the box rule for Position) and aesthetics. A reward that fails
on an item is recorded as ``null`` with its reason; it is never counted as 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from pydantic import Field

from shared.client import RetryableError
from shared.config import ConfigError, StrictModel
from trainer.evaluation.dataset import BenchItem, load_image, references

log = logging.getLogger(__name__)

DIMENSIONS = ("sc", "sc_paper", "sa", "aesthetics")
LABELS = {"sc": "SC", "sc_paper": "SC (paper)", "sa": "SA", "aesthetics": "Aesthetics"}
POSITION = "Position"


class BenchRewards(StrictModel):
    """Which server reward computes each dimension (names as in the server's rewards.yaml; the
    defaults are the names ``psr make-tiny`` writes)."""

    sc: str = Field(default="subject", description="subject consistency, one-to-one protocol")
    sc_paper: str | None = Field(default="subject_paper", description="subject consistency, the paper's "
                                 "protocol (a subject_consistency reward with paper_fallback: true; null: not reported)")
    sa: str = Field(default="judge", description="semantic alignment of every subset but Position (0-1)")
    sa_position: str = Field(default="position", description="semantic alignment of Position: the box rule")
    aesthetics: str | None = Field(default="hpsv3", description="aesthetics/preference, HPSv3 as in the paper (null: not reported)")


class BenchConfig(StrictModel):
    """``psr bench score`` settings (YAML via ``--config``, ``--set key=value`` overrides)."""

    rewards: BenchRewards = Field(default_factory=BenchRewards)
    batch_size: int = Field(default=16, ge=1, le=1024, description="items per scoring request")
    concurrency: int = Field(default=4, ge=1, le=64, description="requests in flight at once (the server batches across them)")
    image_format: str = Field(default="raw", pattern="^(raw|png|jpeg)$", description="how images travel")
    ready_timeout_s: float = Field(default=300.0, ge=0, description="how long to wait for rewards to load")
    connect_timeout_s: float = Field(default=20.0, ge=0, description="how long to retry a server that "
                                     "cannot be reached yet (e.g. still starting)")

    def routes(self, subset: str) -> dict[str, str]:
        """Dimension -> reward name for one subset (Position's SA is the box rule)."""
        r = self.rewards
        names = {"sc": r.sc, "sc_paper": r.sc_paper, "sa": r.sa_position if subset == POSITION else r.sa,
                 "aesthetics": r.aesthetics}
        return {d: n for d, n in names.items() if n}

    def reward_names(self, subsets: Iterable[str]) -> list[str]:
        return sorted({n for s in set(subsets) for n in self.routes(s).values()})


class BenchAborted(RuntimeError):
    """The service kept failing; records written so far are kept for a resumed run."""


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)  # inf would break strict JSON


def json_safe(obj: Any) -> Any:
    """Details as strict JSON: non-finite floats become ``None`` (a reward may report NaN inside)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def failed_record(item: BenchItem, result_path: Path | None, dims: Iterable[str], reason: str) -> dict[str, Any]:
    """A record whose every dimension failed for the same reason (no image, unreadable file...)."""
    dims = list(dims)
    return {"key": item.key, "subset": item.subset, "index": item.index, "instruction": item.instruction,
            "result_path": None if result_path is None else str(result_path),
            "scores": dict.fromkeys(dims), "rewards": {}, "errors": dict.fromkeys(dims, reason),
            "details": {}, "versions": {}}


def records_from_scores(items: list[BenchItem], paths: list[Path], routes: dict[str, str], res: Any) -> list[dict]:
    """Turn one ``Scores`` answer into per-item records (dimension names, failures with reasons)."""
    reasons: dict[tuple[int, str], str] = {(e["sample"], e["reward"]): e["message"] for e in res.errors}
    out = []
    for i, item in enumerate(items):
        rec = failed_record(item, paths[i], routes, "")
        rec["errors"] = {}
        for dim, name in routes.items():
            score = _finite(res.scores[name][i]) if name in res.scores else None
            rec["scores"][dim] = score
            rec["rewards"][dim] = name
            if score is None:
                rec["errors"][dim] = reasons.get((i, name), f"reward {name!r} returned no score")
            details = res.details.get(name)
            if details and details[i] is not None:
                rec["details"][dim] = json_safe(details[i])
            if name in res.versions:
                rec["versions"][dim] = res.versions[name]
        out.append(rec)
    return out


class ScoreStore:
    """Append-only JSONL of item records; the last record of a key wins."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict] = {}
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            for n, line in enumerate(lines):
                try:
                    rec = json.loads(line)
                    self.records[rec["key"]] = rec
                except (json.JSONDecodeError, KeyError, TypeError):
                    if n < len(lines) - 1:
                        raise ConfigError(f"{path}: line {n + 1} is not a score record; use a new --out") from None
                    # cut off by an interruption: drop it (atomically) so that item is scored again
                    log.warning("%s: dropping an incomplete last line", path)
                    tmp = path.with_name(path.name + ".tmp")
                    tmp.write_text("".join(f"{x}\n" for x in lines[:-1]), encoding="utf-8")
                    os.replace(tmp, path)
            text = path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):  # a whole record whose newline was cut off
                with path.open("a", encoding="utf-8") as f:
                    f.write("\n")

    def add(self, records: list[dict]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n")
                self.records[rec["key"]] = rec
            f.flush()


def check_run(out: Path, meta: dict[str, Any]) -> None:
    """Refuse to mix scores from different reward settings or data in one output folder."""
    path, scores = out / "run.json", out / "scores.jsonl"
    if path.exists() and scores.exists() and scores.stat().st_size:
        old = json.loads(path.read_text())
        changed = [k for k in meta if k in old and old[k] != meta[k]]  # keys newer than old run.json pass
        if changed:
            raise ConfigError(f"{out} holds scores made with other {', '.join(changed)} ({path}); "
                              "use a new --out folder or pass --restart to start over")
    path.write_text(json.dumps(meta, indent=1))


def wait_for_rewards(client: Any, names: list[str], timeout: float, connect_timeout: float = 0.0) -> None:
    """Check that the server hosts every reward named, then wait until they are loaded.

    A server that cannot be reached is retried for ``connect_timeout`` seconds (it may be starting).
    """
    import httpx

    start = time.monotonic()
    while True:
        try:
            hosted = {r["name"]: r for r in client.rewards()}
        except (httpx.TransportError, RetryableError):  # not listening yet, or answering 503 while it starts
            if time.monotonic() - start >= connect_timeout:
                raise
            time.sleep(0.5)
            continue
        missing = [n for n in names if n not in hosted]
        if missing:
            raise ConfigError(f"the reward server does not host {missing} (it hosts {sorted(hosted)}); "
                              "map the dimensions to hosted rewards with --set rewards.sc=NAME etc.")
        loading = [n for n in names if not hosted[n].get("ready", True)]
        if not loading:
            return
        if time.monotonic() - start > timeout:
            raise BenchAborted(f"rewards {loading} did not finish loading within {timeout} s")
        time.sleep(0.2)


def _refused(exc: Exception) -> bool:
    status = getattr(exc, "status", None)
    return status is not None and 400 <= status < 500 and status != 429


class BenchScorer:
    """Scores items through a ``RewardClient``-like object (``score``/``submit``) into a ``ScoreStore``.

    Each sample carries ``metadata.task`` = the subset in lower case, which the judge's
    ``task: auto`` uses to pick its template (attribute/action/background/complex, else generic).
    """

    def __init__(self, client: Any, config: BenchConfig, root: Path, result_paths: dict[str, Path | None],
                 store: ScoreStore, progress: Callable[[int], None] | None = None):
        self.client, self.config, self.root = client, config, root
        self.result_paths, self.store = result_paths, store
        self.progress = progress or (lambda n: None)

    def pending(self, items: list[BenchItem], retry_failed: bool = False) -> list[BenchItem]:
        """Items without a record, whose record scored another image than the results now name (e.g.
        an item generated after an earlier scoring run), or, with ``retry_failed``, with failures."""
        done = self.store.records

        def stale(key: str) -> bool:
            now = self.result_paths.get(key)
            return done[key].get("result_path") != (None if now is None else str(now))

        return [it for it in items
                if it.key not in done or stale(it.key) or (retry_failed and done[it.key]["errors"])]

    def _prepare(self, item: BenchItem) -> tuple[Any, list] | dict:
        """Images of one item, or a failed record saying why they cannot be read."""
        dims = self.config.routes(item.subset)
        path = self.result_paths.get(item.key)
        if path is None:
            return failed_record(item, None, dims, "no result_path: the item was not generated")
        try:
            image = load_image(path)
            refs = references(self.root, item)
        except OSError as exc:
            return failed_record(item, path, dims, str(exc))
        return image, list(zip(item.categories, refs, strict=True))

    def _submit(self, items: list[BenchItem], inputs: list[tuple[Any, list]]) -> Future:
        routes = self.config.routes(items[0].subset)
        return self.client.submit([x[0] for x in inputs], dict.fromkeys(set(routes.values()), 1.0),
                                  prompts=[it.instruction for it in items], subjects=[x[1] for x in inputs],
                                  metadata=[{"task": it.subset.lower(), "psrbench": it.key} for it in items])

    def _collect(self, items: list[BenchItem], inputs: list, future: Future) -> list[dict]:
        routes = self.config.routes(items[0].subset)
        paths = [self.result_paths[it.key] for it in items]
        try:
            return records_from_scores(items, paths, routes, future.result())
        except Exception as exc:
            if not _refused(exc):
                raise BenchAborted(f"scoring stopped: {exc}") from exc
        if len(items) == 1:  # the service refused this very sample: record why
            return [failed_record(items[0], paths[0], routes, f"request refused: {future.exception()}")]
        out = []
        for item, inp in zip(items, inputs, strict=True):  # find the offending sample(s)
            out += self._collect([item], [inp], self._submit([item], [inp]))
        return out

    def run(self, items: list[BenchItem]) -> None:
        """Score ``items`` (already filtered by ``pending``), writing each batch as it completes."""
        in_flight: deque[tuple[list[BenchItem], list, Future]] = deque()
        for batch in self._batches(items):
            ready, ok_items, inputs = [], [], []
            for item in batch:
                prepared = self._prepare(item)
                if isinstance(prepared, dict):
                    ready.append(prepared)
                else:
                    ok_items.append(item)
                    inputs.append(prepared)
            if ready:
                self.store.add(ready)
                self.progress(len(ready))
            if ok_items:
                in_flight.append((ok_items, inputs, self._submit(ok_items, inputs)))
            while len(in_flight) >= self.config.concurrency:
                self._finish(in_flight.popleft(), in_flight)
        while in_flight:
            self._finish(in_flight.popleft(), in_flight)

    def _finish(self, job: tuple, in_flight: deque) -> None:
        try:
            records = self._collect(*job)
        except BenchAborted:
            for items, inputs, future in in_flight:  # keep whatever else finished
                with contextlib.suppress(BenchAborted):
                    self.store.add(self._collect(items, inputs, future))
            in_flight.clear()
            raise
        self.store.add(records)
        self.progress(len(records))

    def _batches(self, items: list[BenchItem]) -> Iterable[list[BenchItem]]:
        by_subset: dict[str, list[BenchItem]] = {}
        for item in items:
            by_subset.setdefault(item.subset, []).append(item)
        size = self.config.batch_size
        for group in by_subset.values():
            for i in range(0, len(group), size):
                yield group[i:i + size]
