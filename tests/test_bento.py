"""`bentoml build` makes a complete bento offline: service, exports, pinned serving environment, Dockerfile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from exports import EXPORTS_DIR
from tests.server import ROOT


def test_bentoml_build(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    bentoml = Path(sys.executable).parent / "bentoml"
    result = subprocess.run(
        [str(bentoml), "build", "--output", "tag"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (bento,) = (tmp_path / "bentos" / "scenespell").glob("*/bento.yaml")
    root = bento.parent
    for path in EXPORTS_DIR.glob("*.onnx"):
        assert (root / "src" / "exports" / path.name).read_bytes() == path.read_bytes()
    assert (root / "src" / "serving" / "service.py").is_file()
    assert not list((root / "src").glob("training/*")) and not list((root / "src").glob("tests/*"))
    lines = (root / "env" / "python" / "requirements.txt").read_text().splitlines()
    packages = {line.split("==")[0] for line in lines if "==" in line and not line.startswith("#")}
    assert {"bentoml", "onnxruntime", "pillow"} <= packages and not packages & {"torch", "torchvision"}
    assert "bentoml==1.4.39" in lines
    info = yaml.safe_load(bento.read_text())
    assert info["service"] == "serving.service:SceneSpell"
    assert {e["name"]: e["value"] for e in info["envs"]}["BENTOML_DO_NOT_TRACK"] == "true"
    dockerfile = (root / "env" / "docker" / "Dockerfile").read_text()
    assert "USER bentoml" in dockerfile and "requirements.txt" in dockerfile
    apis = yaml.safe_load((root / "apis" / "openapi.yaml").read_text())
    assert "/classify" in apis["paths"] and "/spell" in apis["paths"]
