"""The LAION aesthetic predictor's MLP head and a safe loader for its state dict."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class AestheticMLP(nn.Module):
    """The LAION aesthetic head: input-1024-128-64-16-1 (dropouts inactive at inference)."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors from ``.safetensors`` or a ``.pth``/``.pt``/``.bin`` state dict (never arbitrary pickles)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path} is not a plain tensor state dict (loaded with weights_only=True): {exc}"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} must hold a dict of tensors (a state_dict), got {type(state).__name__}")
    return state


def load_head(path: Path) -> AestheticMLP:
    """Build the MLP with the input size its first layer was saved with, then load it strictly."""
    state = read_state_dict(path)
    first = state.get("layers.0.weight")
    if first is None or first.ndim != 2:
        raise ValueError(f"{path} has no 'layers.0.weight' matrix; keys: {sorted(state)[:8]}")
    head = AestheticMLP(first.shape[1])
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not fit the LAION aesthetic MLP: {exc}") from exc
    return head.eval()
