"""A trained residual classifier rebuilt in PyTorch from its ONNX export, for when its checkpoint is gone.

runs/ (the checkpoints) stays on the machine that trained, while exports/ is committed; so an ensemble that
wants a served network as a member takes it from its graph. The TorchScript exporter folds every batch
norm into the convolution before it (weight and bias). The network is rebuilt from the architecture its run
names, each convolution takes the folded weight, and each batch norm becomes the identity plus the folded
bias (running mean 0, running variance 1 - eps, scale 1). In eval mode it computes what the graph
computes; the caller checks that on real images against ONNX Runtime (`training.export_cnn.check_parity`).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from torch import nn

from exports.metadata import from_model
from training.cnn import SceneClassifier


def folded_layers(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """Every convolution of the network with the batch norm that follows it, in the order they run."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    pairs = list(zip(layers[::2], layers[1::2], strict=True))
    if not all(isinstance(c, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) for c, b in pairs):
        raise ValueError("not a network whose every convolution is followed by a batch norm")
    return pairs


@torch.no_grad()
def classifier_from_export(path: Path, network: str) -> SceneClassifier:
    """The classifier of `path` (an export of `network`, one of training.cnn.NETWORKS), in eval mode."""
    proto = onnx.load(str(path))
    metadata = from_model(proto, str(path))
    if metadata["metrics"].get("flip_averaging"):
        raise ValueError(f"{path}: a flip-averaged graph holds its network twice; rebuild it from its checkpoint")
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in proto.graph.initializer}
    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    dense = [node for node in proto.graph.node if node.op_type == "Gemm"]
    pre = metadata["preprocessing"]
    model = SceneClassifier(network, pre["mean"], pre["std"]).eval()
    pairs = folded_layers(model.net)
    linears = [m for m in model.net.modules() if isinstance(m, nn.Linear)]
    if len(convs) != len(pairs) or len(dense) != 1 or len(linears) != 1:
        raise ValueError(f"{path} is not an export of {network}: {len(convs)} convolutions, {len(pairs)} expected")
    for node, (conv, norm) in zip(convs, pairs):
        weight, bias = weights[node.input[1]], weights[node.input[2]]
        if weight.shape != conv.weight.shape:
            raise ValueError(f"{path} is not an export of {network}: {tuple(weight.shape)} at {node.name}")
        conv.weight.copy_(weight)
        norm.weight.fill_(1.0)
        norm.bias.copy_(bias)
        norm.running_mean.zero_()
        norm.running_var.fill_(1.0 - norm.eps)
    linears[0].weight.copy_(weights[dense[0].input[1]])
    linears[0].bias.copy_(weights[dense[0].input[2]])
    return model
