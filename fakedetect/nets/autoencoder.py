"""Autoencoders with a classifier head: a net that classifies an image from the code it reconstructs it from.

Like every net, `forward` returns one logit per image, so Detector, Grad-CAM and predict use them as any
classifier; `autoencode` returns (logits, reconstruction), the reconstruction in [0, 1] (a sigmoid) at the
input's size, for the reconstruction loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from fakedetect.nets.backbone import Backbone
from fakedetect.nets.base import DetectorNet, conv_bn_relu, fc_head


def _upsample(c_in: int, c_out: int, batch_norm: bool) -> list[nn.Module]:
    """A transposed conv that doubles the size, [BatchNorm], ReLU."""
    return conv_bn_relu(nn.ConvTranspose2d, c_in, c_out, batch_norm, kernel_size=4, stride=2, padding=1)


class ConvAutoencoder(DetectorNet):
    """The autoencoder write-up's model 1: stride-2 convs with ReLU encode (4 with the default `filters`),
    as many transposed convs decode (ReLU, a sigmoid last), and 2 FC layers classify the flattened code."""

    def __init__(
        self,
        filters: Sequence[int] = (32, 64, 128, 256),
        fc_size: int = 256,
        dropout: float = 0.0,
        batch_norm: bool = False,
        in_channels: int = 3,
        resolution: int = 32,
    ) -> None:
        super().__init__()
        if resolution % 2 ** len(filters):
            raise ValueError(
                f"resolution {resolution} must be a multiple of {2 ** len(filters)} for {len(filters)} stride-2 layers"
            )
        channels = [in_channels, *filters]
        self.encoder = nn.Sequential(
            *(
                m
                for c_in, c_out in pairwise(channels)
                for m in conv_bn_relu(nn.Conv2d, c_in, c_out, batch_norm, kernel_size=3, stride=2, padding=1)
            )
        )
        decoder = [m for c_in, c_out in pairwise(reversed(filters)) for m in _upsample(c_in, c_out, batch_norm)]
        decoder += [nn.ConvTranspose2d(filters[0], in_channels, 4, stride=2, padding=1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*decoder)
        code = filters[-1] * (resolution // 2 ** len(filters)) ** 2
        self.classifier = fc_head(code, fc_size, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(x)).squeeze(1)

    def autoencode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encoder(x)
        return self.classifier(code).squeeze(1), self.decoder(code)

    def cam_layers(self) -> list[nn.Module]:
        """The encoder's convolutions: the decoder does not run when classifying."""
        return [m for m in self.encoder if isinstance(m, nn.Conv2d)]


class TransferAutoencoder(DetectorNet):
    """The write-up's models 2-4: a timm encoder (a Backbone, ResNet-18 by default: `pretrained`,
    `weights_path`, `cifar_stem` and `trainable_stages` as there), the encoder's own head (global average
    pooling, dropout, one FC) as the classifier, and a decoder of size-doubling transposed convs with
    BatchNorm, halving the channels down to `min_channels`, back to the input's size.
    """

    def __init__(
        self,
        name: str = "resnet18",
        pretrained: bool = False,
        weights_path: str | None = None,
        cifar_stem: bool = False,
        trainable_stages: int | None = None,
        backbone_lr_scale: float = 1.0,
        dropout: float = 0.0,
        min_channels: int = 16,
        in_channels: int = 3,
        resolution: int = 32,
    ) -> None:
        super().__init__()
        self.encoder = Backbone(
            name,
            pretrained=pretrained,
            weights_path=weights_path,
            cifar_stem=cifar_stem,
            trainable_stages=trainable_stages,
            backbone_lr_scale=backbone_lr_scale,
            drop_rate=dropout,
            in_channels=in_channels,
        )
        channels, size = self._code_shape(in_channels, resolution)
        steps = math.log2(resolution / size)
        if not steps.is_integer():
            raise ValueError(f"{name} turns {resolution} px into {size} px codes: not a power-of-2 reduction")
        decoder: list[nn.Module] = []
        for _ in range(int(steps)):
            out = max(channels // 2, min_channels)
            decoder += _upsample(channels, out, batch_norm=True)
            channels = out
        decoder += [nn.Conv2d(channels, in_channels, 3, padding=1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*decoder)

    @torch.no_grad()
    def _code_shape(self, in_channels: int, resolution: int) -> tuple[int, int]:
        """Channels and size of the encoder's last feature map, measured (eval mode: one image, 1x1 maps)."""
        model = self.encoder.model
        training = model.training
        code = model.eval().forward_features(torch.zeros(1, in_channels, resolution, resolution))
        model.train(training)
        return code.shape[1], code.shape[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.encoder.model
        return model.forward_head(model.forward_features(x)).squeeze(1)

    def autoencode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.encoder.model
        code = model.forward_features(x)
        return model.forward_head(code).squeeze(1), self.decoder(code)

    def param_groups(self) -> list[dict]:
        """The encoder's groups (backbone at `backbone_lr_scale`, head), then the decoder at the full rate."""
        return [*self.encoder.param_groups(), {"params": list(self.decoder.parameters()), "lr_scale": 1.0}]

    def load_pretrained(self) -> None:
        self.encoder.load_pretrained()

    def cam_layers(self) -> list[nn.Module]:
        """The encoder's stages: the decoder does not run when classifying."""
        return self.encoder.cam_layers()
