"""Batched augmentation with per-sample random parameters, run on whole batches on the training device.

torchvision's v2 transforms draw one set of parameters per call, which on a batch tensor would flip or
crop every image the same way; these draw one per image, with no per-sample Python (airbench's approach).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def random_flip(x: Tensor) -> Tensor:
    flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
    return torch.where(flip, x.flip(-1), x)


def random_translate(x: Tensor, pad: int) -> Tensor:
    """Random crop of the reflect-padded image back to its size, i.e. a shift of up to `pad` pixels."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    rows = (dy + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * pad)
    cropped = padded.gather(2, rows)
    cols = (dx + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    return cropped.gather(3, cols)


def random_rotate(x: Tensor, degrees: float) -> Tensor:
    angle = (torch.rand(x.shape[0], device=x.device) * 2 - 1) * math.radians(degrees)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def colour_jitter(x: Tensor, brightness: float, contrast: float, saturation: float) -> Tensor:
    """Per-image brightness, contrast and saturation factors in [1 - s, 1 + s], on [0, 1] images."""
    n = x.shape[0]

    def factor(strength: float) -> Tensor:
        return 1 + (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) * 2 - 1) * strength

    x = x * factor(brightness)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor(contrast) + mean
    if x.shape[1] == 3:
        grey = x.mean(dim=1, keepdim=True)
        x = (x - grey) * factor(saturation) + grey
    return x.clamp(0, 1)


class BatchAugment(nn.Module):
    """The training-time augmentation pipeline; every stage is off unless configured."""

    def __init__(
        self,
        flip: bool = False,
        translate: int = 0,
        rotate: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
    ) -> None:
        super().__init__()
        self.flip, self.translate, self.rotate = flip, translate, rotate
        self.jitter = (brightness, contrast, saturation)

    def forward(self, x: Tensor) -> Tensor:
        """x: float images in [0, 1], (N, C, H, W)."""
        if self.flip:
            x = random_flip(x)
        if self.translate:
            x = random_translate(x, self.translate)
        if self.rotate:
            x = random_rotate(x, self.rotate)
        if any(self.jitter):
            x = colour_jitter(x, *self.jitter)
        return x
