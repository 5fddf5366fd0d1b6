"""A run folder: ``run.json``, per-stage JSONL manifests, images written atomically, one writer at a time.

Crash safety: an image is written to ``NAME.tmp`` and renamed into place; a stage appends an
item's record only after its images exist, with one ``write`` + ``fsync`` per batch. After a
crash, a torn last manifest line is cut off, leftover ``*.tmp`` files are deleted, and items
without a record are simply done again (their images are overwritten), so nothing is half kept
and nothing is recorded twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import ConfigError
from trainer.dataset import load_image, write_json_atomic

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
MANIFESTS = "manifests"
IMAGES = "images"
LOCK_FILE = ".lock"
TMP_SUFFIX = ".tmp"
BUCKET = 1000  # items per image subfolder: millions of files in one folder slow every listing


class Manifest:
    """One stage's records, one JSON object per line, keyed by item ``id``."""

    def __init__(self, path: Path):
        self.path = path

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> dict[str, dict[str, Any]]:
        """Records by id, in file order. A torn last line (a crash mid-write: no newline yet) is not
        a record; a broken line elsewhere is an error; a repeated id keeps its first record."""
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        if not data.endswith(b"\n"):
            lines = lines[:-1]  # a last line without its newline is a write cut short: not a record
        records: dict[str, dict[str, Any]] = {}
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(f"{self.path}: line {number} is not valid JSON; the manifest is damaged") from None
            records.setdefault(record["id"], record)
        return records

    def touch(self) -> None:
        """Create the (empty) manifest: the stage has run, even with nothing to do."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    def repair(self) -> bool:
        """Cut a torn last line off the file (before appending to it); True if one was cut."""
        if not self.path.is_file():
            return False
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return False
        keep = data.rfind(b"\n") + 1
        with open(self.path, "r+b") as f:
            f.truncate(keep)
        log.warning("%s: dropped a torn last line (an interrupted write)", self.path)
        return True

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append records durably: one write, flushed and fsynced."""
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


class RunFolder:
    """The output folder of one run (or one shard of it)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def run_file(self) -> Path:
        return self.root / RUN_FILE

    def manifest(self, stage: str) -> Manifest:
        return Manifest(self.root / MANIFESTS / f"{stage}.jsonl")

    def read_run(self) -> dict[str, Any] | None:
        if not self.run_file.is_file():
            return None
        try:
            return json.loads(self.run_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{self.run_file} cannot be read ({exc}); it is not a psr datagen run folder") from exc

    def write_run(self, doc: dict[str, Any]) -> None:
        write_json_atomic(self.run_file, doc)

    @staticmethod
    def image_relpath(kind: str, item_id: str, index: int, part: int | None = None) -> str:
        """``images/<kind>/<bucket>/<id>[_<part>].png``, relative to the run folder."""
        name = item_id if part is None else f"{item_id}_{part}"
        return f"{IMAGES}/{kind}/{index // BUCKET:04d}/{name}.png"

    def save_image(self, relpath: str, image: np.ndarray) -> str:
        """Write an (H, W, 3) uint8 image atomically (temporary file, then rename); returns ``relpath``."""
        from PIL import Image

        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + TMP_SUFFIX)
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(tmp, format="PNG")
        os.replace(tmp, path)
        return relpath

    def load_image(self, relpath: str) -> np.ndarray:
        """A writable (H, W, 3) uint8 copy of an image of the run."""
        return np.array(load_image(self.root / relpath))

    def remove_partial_files(self) -> int:
        """Delete images a crash left half-written; returns how many."""
        count = 0
        images = self.root / IMAGES
        if images.is_dir():
            for tmp in images.rglob(f"*{TMP_SUFFIX}"):
                tmp.unlink(missing_ok=True)
                count += 1
        if count:
            log.warning("removed %d half-written image(s) under %s", count, images)
        return count

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock on the folder: two processes never write one run."""
        import fcntl

        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file of that name, no permission, a read-only file system
            raise ConfigError(f"--out {self.root}: cannot create the run folder ({exc.strerror or exc})") from None
        path = self.root / LOCK_FILE
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise ConfigError(
                    f"{self.root} is being written by {holder}; wait for it, or use another --out "
                    "(each shard writes its own subfolder)"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"psr datagen (pid {os.getpid()})")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
