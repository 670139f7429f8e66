"""Batched augmentation with per-sample random parameters, run on whole batches on the training device.

torchvision's v2 transforms draw one set of parameters per call, which on a batch tensor would flip or
crop every image the same way; these draw one per image, with no per-sample Python (airbench's approach).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fakedetect.data.degrade import blur, jpeg, shrink
from fakedetect.utils.errors import is_int, is_number, require_each


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


def random_blur_jpeg(
    x: Tensor, blur_prob: float, blur_sigma: float, jpeg_prob: float, jpeg_quality: tuple[int, int]
) -> Tensor:
    """CNNDetection's Blur+JPEG augmentation: each image blurred with sigma ~ U[0, blur_sigma] with
    probability blur_prob, and JPEG re-compressed at quality ~ U[jpeg_quality] with probability jpeg_prob."""
    n = x.shape[0]
    if blur_prob:
        sigma = torch.rand(n, device=x.device) * blur_sigma
        x = blur(x, torch.where(torch.rand(n, device=x.device) < blur_prob, sigma, torch.zeros_like(sigma)))
    if jpeg_prob:
        chosen = torch.nonzero(torch.rand(n, device=x.device) < jpeg_prob).flatten()
        if len(chosen):
            quality = torch.randint(jpeg_quality[0], jpeg_quality[1] + 1, (len(chosen),))
            as_uint8 = (x[chosen] * 255).round().clamp(0, 255).to(torch.uint8)
            x = x.index_copy(0, chosen, jpeg(as_uint8, quality).to(x.dtype) / 255)
    return x


def random_resize(x: Tensor, prob: float, scale: tuple[float, float]) -> Tensor:
    """Downscale-then-upscale, the thumbnail round trip that erases a generator's high frequencies: each image
    with probability `prob`, to a side of U[scale] times its own, drawn as whole pixels so that images of one
    size go through one interpolation (at 32 px at most 25 of them per batch)."""
    n, _, h, w = x.shape
    sides = torch.randint(max(1, math.ceil(h * scale[0])), max(1, int(h * scale[1])) + 1, (n,))
    sides = torch.where(torch.rand(n) < prob, sides, torch.full_like(sides, h))
    for side in sides.unique().tolist():
        if side < h:
            chosen = torch.nonzero(sides == side).flatten().to(x.device)
            x = x.index_copy(0, chosen, shrink(x[chosen], (side, max(1, round(w * side / h)))))
    return x


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
        blur_prob: float = 0.0,
        blur_sigma: float = 3.0,
        jpeg_prob: float = 0.0,
        jpeg_quality: tuple[int, int] = (30, 100),
        resize_prob: float = 0.0,
        resize_scale: tuple[float, float] = (0.25, 1.0),
    ) -> None:
        super().__init__()
        _check_arguments(locals())
        self.flip, self.translate, self.rotate = flip, translate, rotate
        self.jitter = (brightness, contrast, saturation)
        quality_low, quality_high = jpeg_quality  # plain pairs, whatever sequence Hydra passed
        scale_low, scale_high = resize_scale
        self.blur_jpeg = (blur_prob, blur_sigma, jpeg_prob, (quality_low, quality_high))
        self.resize = (resize_prob, (scale_low, scale_high))

    def forward(self, x: Tensor) -> Tensor:
        """x: float images in [0, 1], (N, C, H, W)."""
        if self.blur_jpeg[0] or self.blur_jpeg[2]:
            x = random_blur_jpeg(x, *self.blur_jpeg)
        if self.resize[0]:
            x = random_resize(x, *self.resize)
        if self.flip:
            x = random_flip(x)
        if self.translate:
            x = random_translate(x, self.translate)
        if self.rotate:
            x = random_rotate(x, self.rotate)
        if any(self.jitter):
            x = colour_jitter(x, *self.jitter)
        return x


def _check_arguments(args: dict) -> None:
    """Every data.augment.<key>, checked at construction: out of range, a stage would fail mid-epoch or mean nothing."""

    def share(v: object) -> bool:
        return is_number(v) and 0 <= v <= 1

    def pair(v: object, ok: Callable[[float], bool]) -> bool:
        if not (isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2):
            return False
        low, high = v
        return is_number(low) and is_number(high) and ok(low) and ok(high) and low <= high

    checks = [
        ("flip", lambda v: isinstance(v, bool), "true or false"),
        ("translate", lambda v: is_int(v) and v >= 0, "an integer >= 0 (pixels)"),
        ("rotate", lambda v: is_number(v) and 0 <= v <= 180, "a number of degrees in [0, 180]"),
        ("brightness", share, "a number in [0, 1]"),
        ("contrast", share, "a number in [0, 1]"),
        ("saturation", share, "a number in [0, 1]"),
        ("blur_prob", share, "a probability in [0, 1]"),
        ("blur_sigma", lambda v: is_number(v) and v >= 0, "a number >= 0 (pixels)"),
        ("jpeg_prob", share, "a probability in [0, 1]"),
        ("jpeg_quality", lambda v: pair(v, lambda q: is_int(q) and 1 <= q <= 100), "[low, high] qualities in 1..100"),
        ("resize_prob", share, "a probability in [0, 1]"),
        ("resize_scale", lambda v: pair(v, lambda f: 0 < f <= 1), "[low, high] factors in (0, 1]"),
    ]
    require_each("data.augment", args, checks)
