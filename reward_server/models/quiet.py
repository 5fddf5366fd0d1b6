"""Quiet model libraries for in-process callers that do not go through ``psr`` (benchmarks, tests).

The ``psr`` commands get the same through ``shared.logs.configure_logging``.
"""

from __future__ import annotations

import contextlib

from shared.logs import quiet_loaded_libraries


def quiet_model_libraries() -> None:
    """No weight-loading progress bars or load reports from transformers / diffusers."""
    for name in ("transformers", "diffusers"):
        with contextlib.suppress(ImportError):
            __import__(name)
    quiet_loaded_libraries()
