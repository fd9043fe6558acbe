"""The skeleton: packages import, serving never pulls in torch, every Makefile target parses, lint is clean."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.server import ROOT

TARGETS = ["serve", "test", "train-cnn", "train-p2g", "train-resnet", "train-resnet-distilled", "train-resnet-ensemble",
           "train-resnet-trivial", "train-resnet-trivial-long", "train-resnet-long", "train-resnet-mixup",
           "train-resnet-narrow", "train-resnet-half", "train-resnet-half-nosmooth", "train-resnet-half-deep",
           "train-resnet-half-trainval", "train-resnet-half-cutmix", "train-resnet-half-mixup",
           "train-resnet-narrow-mixup",
           "train-resnet-half-wd1e-3", "train-resnet-half-wd2e-4",
           "train-resnet-half-seed1", "train-resnet-narrow-seed1",
           "train-resnet-half-hires", "train-resnet-half-hires-seed1", "train-resnet-half-hires-bf16",
           "train-resnet-half-hires-bf16-seed1", "train-resnet-narrow-hires-bf16", "train-resnet-hires-bf16",
           "ensemble-cnn", "ensemble-cnn-hires", "ensemble-cnn-bf16", "ensemble-cnn-served",
           "train-transformer", "train-attention-large",
           "train-attention-deep", "train-attention-deep-seed1", "train-attention-distilled",
           "train-attention-deep-stress", "train-attention-deep-stress-seed1", "train-attention-large-stress",
           "ensemble-p2g", "ensemble-p2g-stress", "quantize-p2g", "quantize-p2g-single", "pair-p2g", "pair-p2g-stress",
           "beam-p2g", "peer-p2g", "compare-p2g",
           "export", "bench", "build", "containerize", "container-smoke", "lint", "clean"]  # fmt: skip


@pytest.mark.parametrize("package", ["training", "exports", "serving"])
def test_package_imports(package):
    __import__(package)


def test_serving_never_imports_torch():
    code = (
        "import sys, serving.service\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'training'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("target", TARGETS)
def test_make_dry_run(target):
    result = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_ruff_clean():
    ruff = [sys.executable, "-m", "ruff"]
    check = subprocess.run([*ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    fmt = subprocess.run([*ruff, "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout


def test_requirements_are_pinned():
    for path in sorted((ROOT / "requirements").glob("*.txt")):
        for line in path.read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-r "):
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+\-]+", line), f"{path.name}: {line!r} is not pinned"


def test_gpu_and_cpu_runtimes_never_share_an_environment():
    def pins(name):
        lines = (ROOT / "requirements" / name).read_text().splitlines()
        return {line for line in lines if line and not line.startswith("#")}

    cpu, gpu = pins("serving.txt"), pins("serving-gpu.txt")
    assert {p.split("==")[0] for p in cpu ^ gpu} == {"onnxruntime", "onnxruntime-gpu"}
    assert len({p.split("==")[1] for p in cpu ^ gpu}) == 1  # the same onnxruntime version on CPU and GPU
    assert "onnxruntime-gpu" not in (ROOT / "requirements" / "constraints.txt").read_text()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in (ROOT / "README.md").read_text()


def test_readme_quotes_the_result_tables_verbatim():
    readme = (ROOT / "README.md").read_text()
    tables = ("results/cnn/sweep.md", "results/cnn/ours.md", "results/cnn/ensemble/selection.md",
              "results/cnn/ensemble-hires/selection.md", "results/cnn/ensemble-bf16/selection.md",
              "results/p2g/results.md", "results/p2g/beam_width.md",
              "results/p2g/comparison.md")  # fmt: skip
    for table in tables:
        assert (ROOT / table).read_text() in readme, f"README.md does not quote {table} as written"
