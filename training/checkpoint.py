"""One checkpoint per epoch and a copy of the best, so that any run can be resumed after a stop."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def save(path: Path, **state) -> None:
    """Write atomically: a run killed mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)
