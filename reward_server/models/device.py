"""Resolve the ``device`` and ``dtype`` strings of a reward spec."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

import torch

from shared.config import ConfigError


class DeviceError(ConfigError, RuntimeError):
    """A device name that is not one, or a GPU this machine lacks: the user's to fix. A ConfigError, so
    a command that did not check its device first still ends with one line, not a traceback."""


def resolve_device(device: str) -> torch.device:
    """'auto' means the first GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise DeviceError(f"device {device!r} is not a device name; use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} was asked for but CUDA is not available on this machine")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return resolved


def device_name(value: str) -> str:
    """argparse type of a ``--device`` option: auto, cpu, or a GPU this machine has."""
    try:
        resolve_device(value)
    except DeviceError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; use auto, cpu or a GPU this machine has") from None
    return value


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' means bfloat16 on a GPU and float32 on the CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch threads (``None``: leave torch's default), then restore the old count."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
