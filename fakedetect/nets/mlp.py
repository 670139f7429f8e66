"""The MLP baselines of the from-scratch write-up: flattened pixels through ReLU hidden layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fakedetect.nets.base import DetectorNet


class MLP(DetectorNet):
    """`hidden` lists the hidden widths: one entry is the 2-layer net, three the 4-layer one. No spatial maps,
    so no `cam_layers`."""

    def __init__(
        self, hidden: Sequence[int] = (256,), dropout: float = 0.0, in_channels: int = 3, resolution: int = 32
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * resolution * resolution
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)
        for m in self.layers:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(1)
