from __future__ import annotations

from pathlib import Path

import pytest

from tests.server import ROOT, Server

SHARED_NPZ = ROOT.parent / "shared" / "data" / "intel48.npz"

(ROOT / ".pytest_cache").mkdir(exist_ok=True)


@pytest.fixture(scope="session")
def intel48() -> Path:
    if not SHARED_NPZ.is_file():
        pytest.skip(f"needs the Intel scenes at {SHARED_NPZ} (the ../shared folder beside the checkout)")
    return SHARED_NPZ


@pytest.fixture(scope="session")
def intel48_data(intel48):
    from training.scenes import load_scenes

    return load_scenes(intel48)


@pytest.fixture(scope="session")
def server():
    """The real service on the committed exports, for the whole session."""
    running = Server()
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()
