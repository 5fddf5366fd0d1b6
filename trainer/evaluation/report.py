"""Per-subset x dimension summaries of scored records, as JSON, Markdown and CSV.

A dimension's mean is taken over the items where it was scored; failures are counted beside it
and never enter the mean. "Overall" pools every scored item of all subsets (with the paper's
equal subset sizes this equals the mean of the subset means when nothing failed).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shared.table import format_table
from trainer.evaluation.dataset import SUBSETS
from trainer.evaluation.scoring import DIMENSIONS, LABELS

SUMMARY_FORMAT = "psrbench-summary/1"
OVERALL = "Overall"


def _cell(values: list[float], failed: int) -> dict[str, Any]:
    return {"mean": sum(values) / len(values) if values else None, "scored": len(values), "failed": failed}


def summarize(records: Iterable[dict], label: str) -> dict[str, Any]:
    """Means, scored and failed counts per subset and dimension, plus the failure reasons."""
    records = list(records)
    dims = [d for d in DIMENSIONS if any(d in r["scores"] for r in records)]
    subsets = [s for s in SUBSETS if any(r["subset"] == s for r in records)]
    table: dict[str, dict[str, Any]] = {}
    reasons: Counter[tuple[str, str]] = Counter()
    for group in [*subsets, OVERALL]:
        rows = [r for r in records if group in (OVERALL, r["subset"])]
        entry: dict[str, Any] = {"items": len(rows)}
        for d in dims:
            values = [r["scores"][d] for r in rows if r["scores"].get(d) is not None]
            failed = sum(1 for r in rows if d in r["scores"] and r["scores"][d] is None)
            entry[d] = _cell(values, failed)
        table[group] = entry
    for r in records:
        for d, reason in r["errors"].items():
            reasons[(d, reason)] += 1
    return {
        "format": SUMMARY_FORMAT,
        "label": label,
        "dimensions": dims,
        "rewards": _reward_names(records),
        "table": table,
        "failure_reasons": [{"dimension": d, "reason": why, "count": n} for (d, why), n in reasons.most_common()],
        "subjects": {g: c for g in [*subsets, OVERALL] if (c := subject_counts(records, g))},
    }


def subject_counts(records: list[dict], group: str) -> dict[str, int] | None:
    """Subjects checked, missing and confused in the one-to-one SC details (None when not reported)."""
    counts = Counter()
    for r in records:
        details = r["details"].get("sc")
        if group not in (OVERALL, r["subset"]) or not isinstance(details, dict):
            continue
        subjects = details.get("subjects")
        if isinstance(subjects, list):
            counts["subjects"] += len(subjects)
            counts["missing"] += sum(1 for s in subjects if isinstance(s, dict) and s.get("missing"))
            counts["confused"] += sum(1 for s in subjects if isinstance(s, dict) and s.get("confused"))
    return dict(counts) if counts else None


def _reward_names(records: list[dict]) -> dict[str, list[str]]:
    names: dict[str, set[str]] = {}
    for r in records:
        for d, n in r["rewards"].items():
            names.setdefault(d, set()).add(n)
    return {d: sorted(v) for d, v in names.items()}


def _failed_text(entry: dict[str, Any], dims: list[str]) -> str:
    parts = [f"{LABELS[d]} {entry[d]['failed']}" for d in dims if entry[d]["failed"]]
    return ", ".join(parts) or "0"


def markdown_table(summary: dict[str, Any]) -> str:
    """The paper-style table: one row per subset plus Overall, one column per dimension."""
    dims = summary["dimensions"]
    headers = ["Subset", "Items", *(LABELS[d] for d in dims), "Failed"]
    rows = [[group, entry["items"], *(entry[d]["mean"] for d in dims), _failed_text(entry, dims)]
            for group, entry in summary["table"].items()]
    return format_table(headers, rows, markdown=True)


def markdown_report(summary: dict[str, Any]) -> str:
    """Title, table, which rewards computed each dimension, and failure reasons."""
    lines = [f"# PSRBench: {summary['label']}", "", markdown_table(summary), ""]
    lines.append("Rewards: " + "; ".join(f"{LABELS[d]} = {', '.join(n)}" for d, n in summary["rewards"].items()))
    lines.append("Means are over scored items; failed items are counted in Failed, never as 0.")
    if summary.get("subjects"):
        lines += ["", "## Subjects (one-to-one SC)", "",
                  format_table(["Subset", "Subjects", "Missing", "Confused"],
                               [[g, c["subjects"], c.get("missing", 0), c.get("confused", 0)]
                                for g, c in summary["subjects"].items()], markdown=True),
                  "", "Missing: not found in the image (scored 0). Confused: looks more like another reference."]
    if summary["failure_reasons"]:
        lines += ["", "## Failures", ""]
        lines += [f"- {LABELS[f['dimension']]} x{f['count']}: {f['reason']}" for f in summary["failure_reasons"]]
    return "\n".join(lines) + "\n"


def csv_table(summary: dict[str, Any]) -> str:
    """Wide CSV: subset, items, then mean/scored/failed of every dimension."""
    dims = summary["dimensions"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["subset", "items", *(f"{d}_{k}" for d in dims for k in ("mean", "scored", "failed"))])
    for group, entry in summary["table"].items():
        cells = []
        for d in dims:
            mean = entry[d]["mean"]
            cells += ["" if mean is None else f"{mean:.6f}", entry[d]["scored"], entry[d]["failed"]]
        writer.writerow([group, entry["items"], *cells])
    return buf.getvalue()


def write_reports(summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write summary.json, table.md and table.csv into ``out``; returns their paths."""
    paths = {"summary": out / "summary.json", "markdown": out / "table.md", "csv": out / "table.csv"}
    paths["summary"].write_text(json.dumps(summary, indent=1))
    paths["markdown"].write_text(markdown_report(summary))
    paths["csv"].write_text(csv_table(summary))
    return paths


def load_summary(path: str | Path) -> dict[str, Any]:
    """A ``summary.json`` of an earlier ``psr bench score`` run (or the run's output folder)."""
    from shared.config import ConfigError

    path = Path(path)
    if path.is_dir():
        path = path / "summary.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the summary {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != SUMMARY_FORMAT:
        hint = " (a results JSON? score it first with `psr bench score`, then compare its summary.json)"
        raise ConfigError(f"{path} is not a psr bench summary{hint if isinstance(data, dict) else ''}")
    return data
