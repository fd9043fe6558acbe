"""`make bench` machinery in a tiny run: every table is produced and no request fails. Speed is never asserted
here; the figures of a tiny run mean nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.model_speed import made_from_exports
from exports import EXPORTS_DIR
from exports.runtime import SpellerGraphs, speller_prefixes
from tests.server import ROOT

HEADINGS = (
    "## Targets",
    "## Classifiers: ONNX Runtime vs PyTorch eager",
    "## Spellers: ONNX Runtime vs PyTorch eager",
    "## ONNX Runtime latency at batch 1, every served model",
    "## Serving through the running server",
    "## Ratios",
    "## Memory and endurance",
    "## Startup",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # classifiers on one thread: PyTorch's OpenMP threads crawl when other processes share the cores, and speed is
    # not the point; spellers on two, so that the server comparing speller threads runs too (on one)
    command = [sys.executable, "-m", "bench.run", "--quick", "--threads", "1", "--speller-threads", "2",
               "--exports", str(EXPORTS_DIR), "--output", str(out / "results.md"),
               "--json", str(out / "results.json")]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout, (out / "results.md").read_text(), json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_every_table_is_written_and_printed(quick_run):
    stdout, markdown, _ = quick_run
    for heading in HEADINGS:
        assert heading in markdown, heading
    assert markdown.strip() in stdout
    assert not re.search(r"\bnan\b", markdown, re.IGNORECASE)
    flags = Path("/proc/cpuinfo").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| vector extensions |"))
    assert ("avx2" in row) == (" avx2" in flags)  # the machine table names what sets the speed of the convolutions


@pytest.mark.slow
def test_every_served_model_is_measured(quick_run):
    _, _, results = quick_run
    classifiers = {path.name.removeprefix("cnn-").removesuffix(".onnx") for path in EXPORTS_DIR.glob("cnn-*.onnx")}
    spellers = set(speller_prefixes(EXPORTS_DIR))
    assert {row["model"] for row in results["models"]["classifiers"]} == classifiers
    assert {row["model"] for row in results["models"]["spellers"]} == spellers
    # the ensembles and int8 copies on ONNX Runtime alone, every other speller beside its PyTorch twin
    twinless = {name for name, prefix in speller_prefixes(EXPORTS_DIR).items()
                if made_from_exports(SpellerGraphs(prefix, threads=1).metadata)}  # fmt: skip
    assert twinless and {row["model"] for row in results["models"]["spellers"] if row["torch"] is None} == twinless
    differ = [row["model"] for row in results["models"]["classifiers"] + results["models"]["spellers"]
              if not row["same_size"]]  # fmt: skip
    assert not differ, f"the PyTorch twins of {differ} do not have the exports' parameter counts"


@pytest.mark.slow
def test_no_request_fails(quick_run):
    _, _, results = quick_run
    serving = results["serving"]
    levels = [level for server in serving.values() for key in ("classify", "spell") for level in server.get(key, [])]
    # concurrency 1, 8, 32 of /classify on three servers and of /spell on two (speller threads 2 and 1)
    assert len(levels) == 3 * 5
    assert {key for key, server in serving.items() if "spell" in server} == {"batching on", "speller threads"}
    assert all(level["requests"] > 0 and level["failed"] == 0 for level in levels), levels
    assert all(server["warmup_failed"] == 0 for server in serving.values())
    assert all(point["failed"] == 0 for point in serving["endurance"]["memory"])
    assert serving["endurance"]["after"]["requests"] > 0 and serving["endurance"]["after"]["failed"] == 0


def test_eager_twin_averages_flips_when_the_export_does():
    import torch

    from bench.eager import classifier, same_size
    from exports.metadata import from_session
    from exports.runtime import load_session
    from training.cnn import FlipAveraged

    metadata = from_session(load_session(EXPORTS_DIR / "cnn.onnx"), "cnn.onnx")
    flipped = {**metadata, "metrics": {**metadata["metrics"], "flip_averaging": True}}
    plain = {**metadata, "metrics": {**metadata["metrics"], "flip_averaging": False}}
    assert isinstance(classifier(flipped), FlipAveraged) and not isinstance(classifier(plain), FlipAveraged)
    assert same_size(classifier(flipped), metadata) and same_size(classifier(plain), metadata)
    images = torch.randint(0, 256, (2, 48, 48, 3), dtype=torch.uint8)
    assert classifier(flipped)(images).shape == classifier(plain)(images).shape == (2, len(metadata["class_names"]))


def test_eager_twin_of_an_ensemble_export_is_the_logit_average_of_its_members():
    from bench.eager import classifier, same_size
    from exports.metadata import from_session
    from exports.runtime import load_session
    from training.cnn import LogitAveraged

    members = [from_session(load_session(EXPORTS_DIR / f"cnn-{name}.onnx"), name) for name in ("bn-gap", "vanilla")]
    metadata = {**members[0], "name": "ensemble", "params": sum(m["params"] for m in members),
                "train_command": "python -m training.ensemble_cnn --candidates a b",
                "members": [{key: m[key] for key in ("name", "params", "train_command")} for m in members]}  # fmt: skip
    twin = classifier(metadata)
    assert isinstance(twin, LogitAveraged) and len(twin.models) == 2 and same_size(twin, metadata)
    assert [model.network_name for model in twin.models] == ["bn-gap", "vanilla"]
