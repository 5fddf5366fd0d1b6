"""What a run produced: ``dataset.json`` (the project's one format), ``summary.json`` (items in,
kept, dropped by reason, per-stage timings) and ``contact_sheet.png`` (references beside target
and instruction, for a person to judge the data)."""

from __future__ import annotations

import logging
import textwrap
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.table import format_table
from trainer.datagen.records import DROPPED, KEPT
from trainer.dataset import item_entry, load_image, write_dataset, write_json_atomic

if TYPE_CHECKING:
    from trainer.datagen.runner import DatagenRun

log = logging.getLogger(__name__)
SUMMARY_FILE = "summary.json"
CONTACT_SHEET = "contact_sheet.png"


def dataset_entry(state: dict[str, Any], models: dict[str, str]) -> dict[str, Any]:
    """A finished item as ``trainer.dataset`` writes it: the fields SFT/GRPO/PSRBench read, plus provenance."""
    edited = bool(state.get("edited"))
    provenance = {
        "index": state["index"],
        "seed": state["seed"],
        "prompt": state["prompt"],
        "edit": state.get("edit") if edited else None,
        "source_target": state["target"] if edited else None,
        "boxes": state["boxes"],
        "relation": state.get("relation"),
        "reference_prompts": state["reference_prompts"],
        "seeds": {"t2i": state["t2i_seed"], "references": state["reference_seeds"], "edit": state.get("edit_seed")},
        "scores": {"aesthetic": state.get("aesthetic"), "identity": state["identity"], "detection": state["box_scores"],
                   "edit_aesthetic": state.get("edit_aesthetic"), "edit_detection": state.get("edit_box_scores")},
        "models": models,
    }
    return item_entry(state["instruction"], state["references"], state["categories"], state["final_target"],
                      state["task"], id=state["id"], provenance=provenance)


def finished(run: DatagenRun) -> list[str]:
    """Ids of the items every stage kept, in index order."""
    from trainer.datagen.runner import ITEM_STAGES

    return [i for i in run.planned if all(run.records[s].get(i, {}).get("status") == KEPT for s in ITEM_STAGES)]


def write_outputs(run: DatagenRun) -> None:
    """``dataset.json`` and the contact sheet of the items finished so far."""
    from trainer.datagen.runner import ITEM_STAGES

    last = ITEM_STAGES[-1]
    entries = []
    for item_id in finished(run):
        state = run.state(item_id, last)
        state.update({k: v for k, v in run.records[last][item_id].items() if k not in ("status",)})
        entries.append(dataset_entry(state, run.doc["models"]))
    if not entries:
        log.warning("no item was kept: %s/dataset.json is empty (see summary.json for the drop reasons)", run.run.root)
    write_dataset(run.run.root, entries)
    contact_sheet(run.run.root, entries, run.cfg.contact_sheet.items, run.cfg.contact_sheet.thumb)


def summarise(run: DatagenRun) -> dict[str, Any]:
    """Items in, kept, dropped by reason and pending, per stage and overall, with timings; -> summary.json."""
    from trainer.datagen.runner import ITEM_STAGES

    stages: dict[str, Any] = {}
    dropped_total: Counter[str] = Counter()
    for stage in ITEM_STAGES:
        available = run.available(stage)
        records = run.records[stage]
        wanted = set(available)
        reasons = Counter(r["reason"] for i, r in records.items() if r["status"] == DROPPED and i in wanted)
        kept_ids = [i for i in available if records.get(i, {}).get("status") == KEPT]
        info = run.doc["stages"].get(stage, {})
        processed = info.get("processed", 0)
        stages[stage] = {
            "in": len(available), "kept": len(kept_ids), "dropped": dict(reasons),
            "pending": sum(1 for i in available if i not in records),
            "seconds": round(info.get("seconds", 0.0), 3), "load_seconds": round(info.get("load_seconds", 0.0), 3),
            "seconds_per_item": round(info["seconds"] / processed, 4) if processed else None,
        }
        dropped_total.update({f"{stage}/{k}": v for k, v in reasons.items()})
    kept = len(finished(run))
    summary = {
        "out": str(run.run.root.resolve()), "items": len(run.planned), "kept": kept, "dropped": dict(dropped_total),
        "pending": len(run.planned) - kept - sum(dropped_total.values()), "stages": stages,
        "dataset": str(run.run.root.resolve() / "dataset.json") if (run.run.root / "dataset.json").is_file() else None,
    }
    write_json_atomic(run.run.root / SUMMARY_FILE, summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The per-stage table and the totals, for the terminal."""
    rows = []
    for name, s in summary["stages"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["dropped"].items())) or "-"
        rows.append([name, s["in"], s["kept"], sum(s["dropped"].values()), s["pending"], s["load_seconds"],
                     s["seconds_per_item"], reasons])
    table = format_table(["stage", "in", "kept", "dropped", "pending", "load s", "s/item", "drop reasons"], rows)
    dropped = sum(summary["dropped"].values())
    lines = [table, f"{summary['items']} items: {summary['kept']} kept, {dropped} dropped, {summary['pending']} pending"]
    if summary.get("dataset"):
        lines.append(f"dataset: {summary['dataset']}")
        sheet = Path(summary["dataset"]).parent / CONTACT_SHEET
        if sheet.is_file():
            lines.append(f"contact sheet: {sheet}")
    return "\n".join(lines)


def _thumb(path: Path, side: int):
    """The image scaled (up or down) to fit a ``side`` square, centred on white."""
    from PIL import Image

    image = Image.fromarray(load_image(path))
    scale = side / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def _fit_text(text: str, font, width: int, max_lines: int) -> str:
    """Wrap ``text`` to ``width`` pixels; cut to ``max_lines`` lines (the last ending with an ellipsis)."""
    per_line = max(8, int(width / max(font.getlength("n"), 1)))
    lines = textwrap.wrap(text, width=per_line) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: per_line - 3].rstrip() + "..."
    return "\n".join(lines)


def contact_sheet(root: Path, entries: list[dict[str, Any]], count: int, side: int) -> Path | None:
    """One row per sampled item: the target (red frame), up to 4 labelled references, task and instruction."""
    from PIL import Image, ImageDraw, ImageFont

    path = root / CONTACT_SHEET
    if not entries or count == 0:
        path.unlink(missing_ok=True)
        return None
    picks = sorted({round(k * (len(entries) - 1) / max(count - 1, 1)) for k in range(min(count, len(entries)))})
    size = max(10, min(16, side // 10))
    font = ImageFont.load_default(size=size)
    label, pad, text_w = size + 4, 8, 3 * side
    row_h = side + label + pad
    columns = 1 + max(len(entries[k]["input_path"]) for k in picks)  # the target, then the references
    sheet = Image.new("RGB", (columns * (side + pad) + text_w + 2 * pad, len(picks) * row_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, k in enumerate(picks):
        entry, y = entries[k], pad + row * row_h
        sheet.paste(_thumb(root / entry["target_path"], side), (pad, y))
        draw.rectangle([pad - 2, y - 2, pad + side + 1, y + side + 1], outline=(200, 30, 30), width=2)
        draw.text((pad, y + side + 2), "target", fill=(200, 30, 30), font=font)
        for j, ref in enumerate(entry["input_path"]):
            x = pad + (j + 1) * (side + pad)
            sheet.paste(_thumb(root / ref, side), (x, y))
            draw.text((x, y + side + 2), entry[f"category{j + 1}"][:24], fill=(0, 0, 0), font=font)
        header = f"{entry.get('task')} | {entry.get('id', '')}"
        body = _fit_text(entry["instruction"], font, text_w, max(1, (side + label) // (size + 3) - 1))
        x = pad + columns * (side + pad)
        draw.multiline_text((x, y), header + "\n" + body, fill=(0, 0, 0), font=font, spacing=3)
    sheet.save(path)
    return path
