"""Logging for the ``psr`` commands: our own messages at the chosen level, library chatter off.

A clean run prints what the user asked for. ``configure_logging`` (called once by ``psr``):

* our packages (``shared``, ``reward_server``, ``trainer``, ``bench``) log at ``--log-level``;
* every other logger -- httpx's line per request, open_clip's ``INFO root:`` lines -- only from
  WARNING up, unless ``--log-level DEBUG`` asks for everything;
* weight-loading progress bars and advisory warnings of the Hugging Face libraries are off
  (through their environment switches, so nothing heavy is imported here);
* a record a library already printed with its own handler (huggingface_hub's retry warnings)
  is not printed a second time by ours.
"""

from __future__ import annotations

import logging
import os
import sys

OUR_PACKAGES = ("shared", "reward_server", "trainer", "bench")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
HANDLER_NAME = "psr"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Environment switches the model libraries read when they are imported (a user's own setting wins).
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bars, hub downloads
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DIFFUSERS_VERBOSITY": "error",
}


def parse_level(name: str) -> int:
    """``"info"`` -> ``logging.INFO``; a ValueError naming the valid levels otherwise."""
    upper = str(name).upper()
    if upper not in LEVELS:
        raise ValueError(f"unknown log level {name!r}; use one of {', '.join(LEVELS)}")
    return getattr(logging, upper)


class _DropMisleading(logging.Filter):
    """open_clip warns on the root logger that it built random weights; our rewards then load a
    state dict into them (``pretrained=None`` is deliberate), so the warning only misleads."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded for model")


class _NotPrintedElsewhere(logging.Filter):
    """Drops records that a logger between the source and the root already printed."""

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None and logger is not logging.getLogger():
            if logger.handlers:
                return False
            if not logger.propagate:
                return True
            logger = logger.parent
        return True


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (tests swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(level: str | int = "INFO", stream=None) -> None:
    """Set up the ``psr`` commands' logging (see the module docstring)."""
    numeric = parse_level(level) if isinstance(level, str) else level
    verbose = numeric <= logging.DEBUG
    if not verbose:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
    handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderr()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_NotPrintedElsewhere())
    handler.addFilter(_DropMisleading())
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:  # called again (tests): replace ours only
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name in OUR_PACKAGES:
        logging.getLogger(name).setLevel(numeric)
    if not verbose:
        quiet_loaded_libraries()


def quiet_loaded_libraries() -> None:
    """Turn off progress bars and info chatter of the model libraries that are already imported
    (the environment switches of ``configure_logging`` cover those imported later)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in ("transformers", "diffusers"):
        module = sys.modules.get(name)
        if module is None:
            continue
        lib_logging = module.utils.logging
        lib_logging.set_verbosity_error()
        lib_logging.disable_progress_bar()
