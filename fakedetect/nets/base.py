"""What Detector and Grad-CAM may ask of a net beyond `forward`, with defaults for nets that need nothing more."""

from __future__ import annotations

from typing import Any

from torch import nn


def conv_bn_relu(
    conv: type[nn.Conv2d | nn.ConvTranspose2d], c_in: int, c_out: int, batch_norm: bool, **conv_args: Any
) -> list[nn.Module]:
    """conv -> [BatchNorm] -> ReLU, the block of every conv net here; no conv bias under BatchNorm, which
    would cancel it."""
    return [
        conv(c_in, c_out, bias=not batch_norm, **conv_args),
        *([nn.BatchNorm2d(c_out)] if batch_norm else []),
        nn.ReLU(inplace=True),
    ]


def fc_head(features: int, fc_size: int, dropout: float) -> nn.Sequential:
    """The conv nets' classifier: flatten -> FC(fc_size) -> ReLU -> dropout -> 1 logit."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(features, fc_size), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(fc_size, 1)
    )


class DetectorNet(nn.Module):
    """Base of every net: `forward` maps (N, C, H, W) float images to N logits (FAKE positive).

    - `param_groups()`: optimizer groups, each with an `lr_scale` (a backbone trained slower than its head).
    - `load_pretrained()`: initial weights fetched when a fit starts from scratch, never when a trained net is
      rebuilt from a checkpoint.
    - `cam_layers()`: layers that `forward` runs, shallow to deep, where Grad-CAM may look; none for a net
      without spatial feature maps.
    """

    def param_groups(self) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr_scale": 1.0}]

    def load_pretrained(self) -> None:
        """Nothing to load: the net starts from its own initialization."""

    def cam_layers(self) -> list[nn.Module]:
        return []
