"""The image, built and run for real (issue #7): what `make containerize` and `make container-smoke` do.

One build per session, with docker where its daemon runs, else podman, which deploy/container.sh installs when it
can (root, apt-get). Skips with the reason where no engine can be had. The first build on a machine also makes the
base image (about 2 min); later builds reuse it and the cached layers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from exports import EXPORTS_DIR
from tests.server import ROOT

SCRIPT = ROOT / "deploy" / "container.sh"
IMAGE = "scenespell:pytest"
LOG = ROOT / ".pytest_cache" / "container-build.log"


def engine_or_skip() -> str:
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return "docker"
    if shutil.which("podman") or (os.geteuid() == 0 and shutil.which("apt-get")):
        return "podman"
    pytest.skip("no container engine: no docker daemon, no podman, and no root apt-get to install podman")


def environment(bentoml_home: Path) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "BENTOML_HOME": str(bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
        "PATH": f"{venv_bin}:{os.environ['PATH']}",
    }


@pytest.fixture(scope="session")
def image(tmp_path_factory) -> str:
    """`make containerize`, into a bento store of its own; the build log goes to .pytest_cache/container-build.log."""
    tool = engine_or_skip()
    start = time.monotonic()
    env = environment(tmp_path_factory.mktemp("bentoml"))
    result = subprocess.run(
        [str(SCRIPT), "build", "bentofile.yaml", IMAGE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    LOG.write_text(result.stdout + result.stderr + f"\n[{tool}] build took {time.monotonic() - start:.0f} s\n")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return IMAGE


def inspect(image: str, template: str) -> str:
    tool = subprocess.run([str(SCRIPT), "engine"], capture_output=True, text=True, check=True).stdout.strip()
    return subprocess.run(
        [tool, "image", "inspect", "--format", template, image], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_image_config(image):
    assert inspect(image, "{{.Config.User}}") == "bentoml"
    assert "BENTOML_DO_NOT_TRACK=true" in inspect(image, "{{.Config.Env}}")
    health = inspect(image, "{{json .Config.Healthcheck}}")
    assert "/readyz" in health, f"no HEALTHCHECK on /readyz: {health}"
    size = int(inspect(image, "{{.Size}}"))
    print(f"image {image}: {size / 1e6:.0f} MB")
    assert size < 800e6, f"the image grew to {size / 1e6:.0f} MB"


def test_image_holds_the_committed_exports_and_the_pinned_serving_environment(image):
    script = "sha256sum src/exports/*.onnx && python -m pip list --format freeze --disable-pip-version-check"
    result = subprocess.run(
        [str(SCRIPT), "run", "--rm", "--entrypoint", "sh", image, "-c", script], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    digests = {Path(line.split()[1]).name: line.split()[0] for line in lines if "src/exports/" in line}
    expected = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in EXPORTS_DIR.glob("*.onnx")}
    assert digests == expected
    installed = {line.split("==")[0].lower().replace("_", "-"): line for line in lines if "==" in line}
    assert not installed.keys() & {"torch", "torchvision", "training"}, "the image holds training packages"
    pins = (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
    pinned = {line.split("==")[0].lower().replace("_", "-"): line for line in pins if "==" in line}
    off = [line for name, line in installed.items() if name not in ("pip", "setuptools") and pinned.get(name) != line]
    assert not off, f"packages in the image not at the versions of constraints.txt: {off}"


def test_container_smoke(image, intel48):
    """`make container-smoke`: the image on 127.0.0.1, /readyz, /classify, /spell, non-root, removed."""
    result = subprocess.run(
        [sys.executable, "-m", "deploy.smoke", "--image", image, "--data", str(intel48)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "container smoke test passed" in result.stdout


def test_gpu_variant_bento(tmp_path):
    """`make containerize GPU=1` builds this bento; its image needs a CUDA base from a registry, so here only the
    bento and its Dockerfile are checked."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "bentoml"), "build", "-f", "deploy/bentofile-gpu.yaml", "--output", "tag"],
        cwd=ROOT,
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (bento,) = (tmp_path / "bentos" / "scenespell-gpu").glob("*/bento.yaml")
    dockerfile = (bento.parent / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM nvidia/cuda:13." in dockerfile and "cudnn-runtime" in dockerfile
    assert "HEALTHCHECK" in dockerfile and "USER bentoml" in dockerfile
    requirements = (bento.parent / "env" / "python" / "requirements.txt").read_text().splitlines()
    names = {line.split("==")[0] for line in requirements if "==" in line}
    assert "onnxruntime-gpu" in names and not names & {"onnxruntime", "torch"}
    assert yaml.safe_load(bento.read_text())["name"] == "scenespell-gpu"
