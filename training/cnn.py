"""Scene CNNs. Every network takes uint8 NHWC images; `Normalize` turns them into what the layers expect.

The normalisation is part of the module, so the exported ONNX graph takes raw pixels and nobody
repeats the mean and standard deviation elsewhere.
"""

from __future__ import annotations

import torch
from torch import nn

NUM_CLASSES = 6


class Normalize(nn.Module):
    """uint8 [N, H, W, 3] -> float [N, 3, H, W], scaled to [0, 1] then standardised per channel."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        return (x - self.mean) / self.std


def conv_block(c_in: int, c_out: int, batch_norm: bool, dropout: float) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, 3, stride=1, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2, 2), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def vanilla(dropout: float = 0.1) -> nn.Sequential:
    """The reference network: 3 conv blocks (32/64/128), flatten, 1024, 512, 6. 5,340,742 parameters."""
    return nn.Sequential(
        conv_block(3, 32, False, dropout),
        conv_block(32, 64, False, dropout),
        conv_block(64, 128, False, dropout),
        nn.Flatten(),
        nn.Linear(128 * 6 * 6, 1024),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(1024, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, NUM_CLASSES),
    )


def bn_gap(dropout: float = 0.1) -> nn.Sequential:
    """vanilla with batch norm after each conv and the first dense layer, global average pooling. 755,718."""
    return nn.Sequential(
        conv_block(3, 32, True, dropout),
        conv_block(32, 64, True, dropout),
        conv_block(64, 128, True, dropout),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 1024),
        nn.BatchNorm1d(1024),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(1024, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, NUM_CLASSES),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a shortcut (a 1x1 projection when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def resnet(
    widths: tuple[int, ...] = (64, 128, 256), blocks: int = 2, dropout: float = 0.1, first_stride: int = 2
) -> nn.Sequential:
    """A residual network for 48x48 inputs: a 3x3 stem, then one stage per width, each halving the
    resolution (48 -> 24 -> 12 -> 6; with first_stride 1 the first stage keeps 48x48: 48 -> 48 -> 24 -> 12),
    global average pooling and one linear layer."""
    layers: list[nn.Module] = [nn.Conv2d(3, widths[0] // 2, 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0] // 2),
                               nn.ReLU(inplace=True)]  # fmt: skip
    c_in = widths[0] // 2
    for stage, width in enumerate(widths):
        for i in range(blocks):
            stride = 1 if i > 0 else first_stride if stage == 0 else 2
            layers.append(BasicBlock(c_in, width, stride))
            c_in = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, NUM_CLASSES)]
    return nn.Sequential(*layers)


def resnet_narrow() -> nn.Sequential:
    """`resnet` at three quarters of its width (48/96/192): the width ablation, about 0.56 of the work."""
    return resnet(widths=(48, 96, 192))


def resnet_half() -> nn.Sequential:
    """`resnet` at half its width (32/64/128): the second point of the width ablation, about 0.25 of the work."""
    return resnet(widths=(32, 64, 128))


def resnet_half_deep() -> nn.Sequential:
    """`resnet-half` with three basic blocks per stage instead of two (the depth ablation): 1,079,574
    parameters, about 1.5 times the work."""
    return resnet(widths=(32, 64, 128), blocks=3)


def resnet_half_hires() -> nn.Sequential:
    """`resnet-half` whose first stage keeps the full 48x48 resolution (the resolution ablation): the same
    691,606 parameters, about twice the work."""
    return resnet(widths=(32, 64, 128), first_stride=1)


def resnet_narrow_hires() -> nn.Sequential:
    """`resnet-narrow` whose first stage keeps the full 48x48 resolution: the same 1,553,502 parameters,
    about twice the work (affordable when trained under bfloat16)."""
    return resnet(widths=(48, 96, 192), first_stride=1)


def resnet_hires() -> nn.Sequential:
    """`resnet` whose first stage keeps the full 48x48 resolution: the same 2,759,462 parameters, about twice
    the work (affordable when trained under bfloat16)."""
    return resnet(first_stride=1)


NETWORKS = {"vanilla": vanilla, "bn-gap": bn_gap, "resnet": resnet, "resnet-narrow": resnet_narrow,
            "resnet-half": resnet_half, "resnet-half-deep": resnet_half_deep, "resnet-half-hires": resnet_half_hires,
            "resnet-narrow-hires": resnet_narrow_hires, "resnet-hires": resnet_hires}  # fmt: skip


class SceneClassifier(nn.Module):
    """Normalisation followed by one of NETWORKS: uint8 NHWC images in, logits out."""

    def __init__(self, network: str, mean: list[float], std: list[float]):
        super().__init__()
        self.network_name = network
        self.normalize = Normalize(mean, std)
        self.net = NETWORKS[network]()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))


class FlipAveraged(nn.Module):
    """Test-time flip averaging: the mean of a classifier's logits over the image and its left-right mirror
    (NHWC: width is dim 2). Same input and output as the classifier, so it exports as one graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (self.model(images) + self.model(images.flip(2))) / 2


class LogitAveraged(nn.Module):
    """An ensemble: the mean of its classifiers' logits (a distillation teacher made of several runs)."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([model(images) for model in self.models]).mean(0)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
