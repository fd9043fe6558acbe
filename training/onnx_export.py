"""torch.onnx.export with the settings every SceneSpell export shares, then metadata embedded."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from exports import metadata as export_metadata

OPSET = 17


def export(
    module: torch.nn.Module,
    args: tuple,
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic_axes: dict,
    metadata: dict,
) -> None:
    """TorchScript-based export (dynamo=False): it keeps LSTM lengths and the batch dynamic."""
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )
    model = onnx.load(str(path))
    export_metadata.embed(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
