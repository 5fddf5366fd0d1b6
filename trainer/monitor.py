"""What a run reports: TensorBoard scalars, sample grids with their scores, step timing."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


class StepTimer:
    """Wall time per phase (rollout / reward_wait / update) within a step.

    Phases nest: time spent in an inner phase (waiting for rewards inside the update) counts
    for the inner phase only, so the phases add up to the step's wall time.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []  # [start, time spent in children]

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        frame = [time.perf_counter(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            elapsed = time.perf_counter() - frame[0]
            self.seconds[name] += elapsed - frame[1]
            if self._stack:
                self._stack[-1][1] += elapsed

    def metrics(self) -> dict[str, float]:
        total = sum(self.seconds.values()) or 1e-9
        out = {f"time/{k}_s": v for k, v in self.seconds.items()}
        out.update({f"time/{k}_fraction": v / total for k, v in self.seconds.items()})
        out["time/step_s"] = total
        return out


def score_grid(
    images: Sequence[np.ndarray], labels: Sequence[str], columns: int = 6, scale_to: int = 128
) -> Image.Image:
    """Tile images (upscaled to at least ``scale_to`` px) with a caption line under each."""
    if not images:
        raise ValueError("no images for the grid")
    h, w = images[0].shape[:2]
    factor = max(1, scale_to // max(h, w))
    cell_w, cell_h, caption = w * factor, h * factor, 14
    cols = min(columns, len(images))
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * cell_w, rows * (cell_h + caption)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        x, y = (i % cols) * cell_w, (i // cols) * (cell_h + caption)
        grid.paste(Image.fromarray(img).resize((cell_w, cell_h), Image.NEAREST), (x, y))
        draw.text((x + 2, y + cell_h + 1), label, fill="black")
    return grid


class Monitor:
    """TensorBoard writer of the main process (others get a no-op ``Monitor(None)``)."""

    def __init__(self, log_dir: Path | None):
        self.log_dir = log_dir
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            if value is not None and np.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def grid(self, grid: Image.Image, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image("samples", np.asarray(grid), step, dataformats="HWC")
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
