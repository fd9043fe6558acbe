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


def save_progress(path: Path, model, optimizer, generator: torch.Generator, history: list, best: dict, **extra) -> None:
    """Everything needed to continue a run exactly where it stopped: weights, optimizer, RNG states, history,
    and any further objects with a state_dict (a learning-rate schedule, an average of the weights)."""
    save(
        path,
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        generator=generator.get_state(),
        torch_rng=torch.get_rng_state(),
        history=history,
        best=best,
        **{name: value.state_dict() for name, value in extra.items() if value is not None},
    )


def resume(path: Path, model, optimizer, generator: torch.Generator, name: str, **extra) -> tuple[list, dict] | None:
    """Restore what save_progress wrote, if the file exists; returns (history, best) or None."""
    if not path.exists():
        return None
    state = load(path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    for key, value in extra.items():
        if value is not None:
            value.load_state_dict(state[key])
    print(f"{name}: resumed after epoch {len(state['history'])}", flush=True)
    return state["history"], state["best"]
