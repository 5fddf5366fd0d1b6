"""Manifest records: an item kept by a stage (with what it made) or dropped (with the reason).

Every drop is recorded; nothing is skipped silently. ``REASONS`` is the complete list.
"""

from __future__ import annotations

from typing import Any

KEPT, DROPPED = "kept", "dropped"

REASONS = {
    "unparseable": "a language-model answer cannot be parsed (no labelled line, empty, too long)",
    "missing_subject": "a language-model answer does not name every subject",
    "aesthetic_low": "the target scores below filters.aesthetic_floor",
    "not_detected": "a subject is not found in the image",
    "detected_twice": "a subject's category is found more than once",
    "box_too_small": "a subject's box covers less than detect.min_box_area of the image",
    "identity_lost": "a reference is less similar to its crop than filters.identity_floor",
    "copy_paste": "a reference is more similar to its crop than filters.copy_paste_ceiling",
    "score_failed": "the reward service could not score the item (its message is kept)",
}


def kept(item: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """The record of an item that passed a stage, with what the stage made."""
    return {"id": item["id"], "index": item["index"], "status": KEPT, **fields}


def dropped(item: dict[str, Any], reason: str, message: str, **fields: Any) -> dict[str, Any]:
    """The record of an item a stage dropped: ``reason`` is one of ``REASONS``; ``message`` says what."""
    if reason not in REASONS:
        raise ValueError(f"unknown drop reason {reason!r}")
    return {"id": item["id"], "index": item["index"], "status": DROPPED, "reason": reason, "message": message, **fields}
