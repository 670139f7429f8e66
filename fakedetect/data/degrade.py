"""Real-world degradations of uint8 image batches: re-compression, resizing, blur and noise.

Used both to measure robustness (fixed strengths) and as CNNDetection-style training augmentation
(random strengths per image), so the two see exactly the same operations.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.io import decode_jpeg, encode_jpeg


def jpeg(x: Tensor, quality: float | Tensor) -> Tensor:
    """JPEG re-compression of uint8 NCHW images at one quality, or one quality per image."""
    qualities = quality.tolist() if isinstance(quality, Tensor) else [int(quality)] * len(x)
    images = list(x.cpu())
    if len(set(qualities)) == 1:
        out = decode_jpeg(encode_jpeg(images, quality=qualities[0]))
    else:
        out = [decode_jpeg(encode_jpeg(img, quality=q)) for img, q in zip(images, qualities, strict=True)]
    return torch.stack(out).to(x.device)


def resize(x: Tensor, factor: float) -> Tensor:
    """Downscale by `factor` (antialiased) and back up: the detail lost in a thumbnail round trip."""
    small = F.interpolate(x.float(), scale_factor=factor, mode="bilinear", antialias=True, align_corners=False)
    return upscale_to(small, x)


def shrink(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Downscale to `size` (antialiased) and back up to x's own size; uint8 stays uint8, floats stay floats."""
    return upscale_to(F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False), x)


def upscale_to(small: Tensor, like: Tensor) -> Tensor:
    back = F.interpolate(small, size=like.shape[-2:], mode="bilinear", align_corners=False)
    return back.round().clamp(0, 255).to(like.dtype) if like.dtype == torch.uint8 else back.to(like.dtype)


def blur(x: Tensor, sigma: float | Tensor) -> Tensor:
    """Gaussian blur with one sigma, or one per image (0 leaves an image unchanged), as a grouped conv."""
    n, c, h, w = x.shape
    sigmas = (
        sigma.to(x.device, torch.float32)
        if isinstance(sigma, Tensor)
        else torch.full((n,), float(sigma), device=x.device)
    )
    radius = max(1, math.ceil(3 * float(sigmas.max())))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigmas.clamp_min(1e-6)[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)
    flat = x.float().reshape(1, n * c, h, w)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * c)
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * c)
    out = flat.reshape(n, c, h, w)
    return out.round().clamp(0, 255).to(x.dtype) if x.dtype == torch.uint8 else out


def noise(x: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """Additive Gaussian noise, `std` in units of the full [0, 1] range."""
    eps = torch.randn(x.shape, generator=generator, device=x.device) * (std * 255)
    return (x.float() + eps).round().clamp(0, 255).to(torch.uint8)


DEGRADATIONS = {"jpeg": jpeg, "resize": resize, "blur": blur, "noise": noise}
# the fixed strengths each takes (a robustness condition's), and what they are; NaN, infinity or a value outside
# (`blur:1e30`, whose kernel radius overflows; `resize:0`) ends in a library's error or a meaningless row
STRENGTHS: dict[str, tuple[Callable[[float], bool], str]] = {
    "jpeg": (lambda v: 1 <= v <= 100, "a JPEG quality in [1, 100]"),
    "resize": (lambda v: 0 < v <= 1, "a downscale factor in (0, 1]"),
    "blur": (lambda v: 0 <= v <= 64, "a Gaussian sigma in [0, 64] pixels"),
    "noise": (lambda v: 0 <= v <= 1, "a noise std in [0, 1] of the pixel range"),
}


def degrade(x: Tensor, kind: str, strength: float) -> Tensor:
    if kind not in DEGRADATIONS:
        raise KeyError(f"unknown degradation '{kind}'; known: {sorted(DEGRADATIONS)}")
    return DEGRADATIONS[kind](x, strength)
