"""A small residual CNN: fakedetect builds it from conf/model/residual_cnn.yaml once the run trusts `my_project.*`."""

from __future__ import annotations

import torch
from torch import nn

from fakedetect.nets.base import DetectorNet, conv_bn_relu


class ResidualBlock(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN, added to its input, then ReLU (He et al., 2016)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn_relu(nn.Conv2d, width, width, True, kernel_size=3, padding=1),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class ResidualCNN(DetectorNet):
    """A stem conv, then `blocks` stages of a residual block and a 2x max-pool, each stage twice as wide as the
    last; global average pooling, dropout and one logit. Fully convolutional: any input resolution.

    DetectorNet is fakedetect's interface for nets (`forward` to one logit per image; `cam_layers` for Grad-CAM).
    """

    def __init__(self, width: int = 16, blocks: int = 2, dropout: float = 0.0, in_channels: int = 3) -> None:
        super().__init__()
        if width < 1 or blocks < 1 or not 0 <= dropout < 1:
            raise ValueError(f"width and blocks must be >= 1 and dropout in [0, 1), got {width}, {blocks}, {dropout}")
        layers: list[nn.Module] = conv_bn_relu(nn.Conv2d, in_channels, width, True, kernel_size=3, padding=1)
        channels = width
        for stage in range(blocks):
            out = width * 2**stage
            if out != channels:
                layers += conv_bn_relu(nn.Conv2d, channels, out, True, kernel_size=1)
            layers += [ResidualBlock(out), nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)

    def cam_layers(self) -> list[nn.Module]:
        return [m for m in self.features if isinstance(m, ResidualBlock)]
