"""Silence the per-load progress bars and load reports of the model libraries in servers."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_model_libraries() -> None:
    """Keep logs readable: no weight-loading progress bars or 'unexpected key' reports."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        import diffusers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_drop_open_clip_random_init)


def _drop_open_clip_random_init(record: logging.LogRecord) -> bool:
    """open_clip warns on the root logger that it built random weights; our rewards then load a
    state dict into them (``pretrained=None`` is deliberate), so the warning only misleads."""
    return not record.getMessage().startswith("No pretrained weights loaded for model")
