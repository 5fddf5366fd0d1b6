"""Radar plots comparing result sets: one polar panel per dimension, one axis per subset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trainer.evaluation.report import OVERALL
from trainer.evaluation.scoring import DIMENSIONS, LABELS

PANEL_INCHES = (4.0, 4.6)
DPI = 100


def radar_size(n_dimensions: int) -> tuple[int, int]:
    """Pixel (width, height) of the PNG ``plot_radar`` writes for ``n_dimensions`` panels."""
    return round(PANEL_INCHES[0] * n_dimensions * DPI), round(PANEL_INCHES[1] * DPI)


def plot_radar(summaries: list[dict[str, Any]], path: str | Path) -> Path:
    """Draw every summary (one coloured polygon each) on a panel per dimension; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if not summaries:
        raise ValueError("nothing to plot: no summaries given")
    dims = [d for d in DIMENSIONS if any(d in s["dimensions"] for s in summaries)]
    subsets = [g for g in summaries[0]["table"] if g != OVERALL]
    for s in summaries[1:]:
        subsets += [g for g in s["table"] if g != OVERALL and g not in subsets]
    angles = np.linspace(0, 2 * np.pi, len(subsets), endpoint=False)
    closed = np.append(angles, angles[:1])
    fig, axes = plt.subplots(1, len(dims), subplot_kw={"projection": "polar"},
                             figsize=(PANEL_INCHES[0] * len(dims), PANEL_INCHES[1]), dpi=DPI, squeeze=False)
    for ax, dim in zip(axes[0], dims, strict=True):
        values_all = []
        for s in summaries:
            vals = [_mean(s, g, dim) for g in subsets]
            values_all += [v for v in vals if np.isfinite(v)]
            ax.plot(closed, [*vals, vals[0]], marker="o", linewidth=1.5, label=s["label"])
            ax.fill(closed, [0 if not np.isfinite(v) else v for v in [*vals, vals[0]]], alpha=0.08)
        lo = min([0.0, *values_all])
        hi = max([lo + 1e-6, *values_all])
        ax.set_ylim(lo, hi + 0.05 * (hi - lo))
        ax.set_theta_offset(np.pi / 2)  # first subset at the top, clockwise
        ax.set_theta_direction(-1)
        ax.set_rlabel_position(180 / len(subsets))  # radial labels between the first two axes
        ax.yaxis.set_major_locator(MaxNLocator(4))
        ax.set_xticks(angles)
        ax.set_xticklabels(subsets, fontsize=8)
        ax.tick_params(axis="x", pad=6)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(LABELS[dim], pad=18)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.06, right=0.94, top=0.82, bottom=0.16, wspace=0.45)
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _mean(summary: dict[str, Any], group: str, dim: str) -> float:
    cell = summary["table"].get(group, {}).get(dim)
    return float("nan") if not cell or cell["mean"] is None else float(cell["mean"])
