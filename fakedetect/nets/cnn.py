"""FakeFinder's flexible CNN: the architecture is a set of hyperparameters, so a search can shape it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fakedetect.nets.base import DetectorNet, conv_bn_relu, fc_head


class FlexibleCNN(DetectorNet):
    """n_layers of conv -> [BatchNorm] -> ReLU -> max-pool, then FC(fc_size) -> ReLU -> dropout -> 1 logit.

    `filters` and `kernel_sizes` may be longer than n_layers and only their first n_layers entries are
    used, so a search can sample a fixed number of per-layer values whatever depth it picks. The
    classifier's input size is measured from `resolution` at construction, not on the first forward,
    so the parameter count and the optimizer see the whole net from the start.
    """

    def __init__(
        self,
        n_layers: int = 2,
        filters: Sequence[int] = (32, 64),
        kernel_sizes: Sequence[int] = (3, 3),
        fc_size: int = 512,
        dropout: float = 0.0,
        batch_norm: bool = False,
        in_channels: int = 3,
        resolution: int = 32,
    ) -> None:
        super().__init__()
        if len(filters) < n_layers or len(kernel_sizes) < n_layers:
            raise ValueError(
                f"n_layers={n_layers} needs that many filters and kernel_sizes, got "
                f"{list(filters)} and {list(kernel_sizes)}"
            )
        if resolution < 2**n_layers:
            raise ValueError(f"resolution {resolution} is too small for {n_layers} pooling layers")
        blocks: list[nn.Module] = []
        channels = in_channels
        for out, k in zip(filters[:n_layers], kernel_sizes[:n_layers], strict=True):
            blocks += [
                *conv_bn_relu(nn.Conv2d, channels, out, batch_norm, kernel_size=k, padding="same"),
                nn.MaxPool2d(2),
            ]
            channels = out
        self.features = nn.Sequential(*blocks)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, resolution, resolution)).numel()
        self.classifier = fc_head(flat, fc_size, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)).squeeze(1)

    def cam_layers(self) -> list[nn.Module]:
        return [m for m in self.features if isinstance(m, nn.Conv2d)]
