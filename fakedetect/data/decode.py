"""Decode policy: one image file's bytes to an upright RGB uint8 array of the size a run asks for.

`fit` says how an image of any shape becomes resolution x resolution: `squash` (resize both sides; right for
CIFAKE's square images), `center_crop` / `random_crop` (native pixels, so a generator's high-frequency traces
survive), `resize_crop` (short side to the resolution, then the centre square; ImageNet backbones at 224). JPEGs
that are scaled down are decoded at a reduced size by libjpeg itself (Pillow's draft mode), HEIC/HEIF through
pillow-heif. Kept free of torch so that decoding worker processes start fast.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fakedetect.utils.choices import Choice
from fakedetect.utils.errors import ConfigError

try:  # a dependency, but a machine whose Pillow it does not fit must still decode every other format
    import pillow_heif
except ImportError as err:
    HEIF_MISSING: str | None = f"HEIC/HEIF needs pillow-heif, which does not import here ({err})"
else:
    pillow_heif.register_heif_opener()
    HEIF_MISSING = None
# the brand of an ISO-BMFF file (bytes 4-12) that marks HEIC/HEIF, to name the cause when it cannot be opened
HEIF_BRANDS = (b"ftypheic", b"ftypheix", b"ftyphevc", b"ftypmif1", b"ftypmsf1", b"ftypheif")
# the Pillow decoders a file is offered to: the formats of the image suffixes a listing takes (IMAGE_SUFFIXES in
# layouts.py; JPEG opens phones' MPO too), so that none of Pillow's forty others parses an untrusted file (an EPS
# named .jpg would run Ghostscript)
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF") + (() if HEIF_MISSING else ("HEIF",))


class Fit(Choice):
    """How an image of any shape becomes resolution x resolution (the module docstring)."""

    SQUASH = "squash"
    CENTER_CROP = "center_crop"
    RANDOM_CROP = "random_crop"
    RESIZE_CROP = "resize_crop"


# images above this many pixels are refused before their pixels are decoded (data.max_pixels; None: no limit)
DEFAULT_MAX_PIXELS = 8192 * 8192
# the dtype of an array of file digests (SHA-1 in hex); b"" marks a file that could not be read
DIGEST = "S40"
# antialiased when scaling down; the resampling of every cache and checkpoint so far
RESAMPLE = Image.Resampling.BICUBIC


class BadImageError(ConfigError):
    """An image file could not be decoded and the configuration says not to skip it."""


def file_digest(data: bytes) -> str:
    """The byte identity of an encoded file: the data audit's duplicate groups and the test split's duplicate
    mask both compare files by it, so the two always agree."""
    return hashlib.sha1(data).hexdigest()


def check_fit(fit: str, key: str = "data.fit") -> Fit:
    if fit not in Fit.values():
        raise ConfigError(f"{key}={fit} is not a fit; use one of {', '.join(Fit.values())}")
    return Fit(fit)


def open_image(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS, draft: int | None = None) -> Image.Image:
    """Open and load one image file, upright (its EXIF orientation applied).

    An image over `max_pixels` is an error, raised from its header before the pixels are decoded: Pillow's own
    decompression-bomb check, with its limit set for this call only (decoding runs in processes, not threads)
    and its warning made an error instead of silenced. `draft`: a JPEG at least twice that size on both sides is
    decoded at 1/2, 1/4 or 1/8 scale by libjpeg, keeping both sides at least `draft` pixels (so which side ends up
    short after the EXIF rotation does not matter); other formats ignore it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's notes on odd but readable files (palette transparency, EXIF)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        default, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
        try:
            try:
                img = Image.open(io.BytesIO(data), formats=FORMATS)
            except UnidentifiedImageError:
                if HEIF_MISSING and data[4:12] in HEIF_BRANDS:
                    raise ValueError(HEIF_MISSING) from None
                raise
            if draft and min(img.size) >= 2 * draft:
                img.draft(None, (draft, draft))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
            raise ValueError(f"over data.max_pixels={max_pixels}, a possible decompression bomb ({err})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = default
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode Pillow opens to 8-bit RGB: the modes of more than 8 bits a pixel (16-bit, 32-bit integer and
    floating-point greyscale) by `eight_bit`, where Pillow's convert would clip them to black or white; every other
    (1, L, P, RGB, RGBA, CMYK, YCbCr, LAB, LA, PA) by Pillow's conversion, transparency dropped and the colours
    under it kept. Pillow itself reads 16-bit colour images as 8-bit RGB(A)."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return Image.fromarray(eight_bit(np.asarray(img), img.mode)).convert("RGB")
    return img.convert("RGBA").convert("RGB") if img.mode in ("P", "LA", "PA") else img.convert("RGB")


def eight_bit(values: np.ndarray, mode: str) -> np.ndarray:
    """Greyscale pixels of more than 8 bits as uint8, each scale's full range to 0..255.

    A 16-bit image (I;16*) spans 0..65535. A 32-bit integer (I) or floating-point (F) image declares no range, so
    it is read on the smallest usual scale that holds its largest value: 0..1 (floating point only), 0..255, or
    0..65535 (a 16-bit image that Pillow widened to 32 bits, as it does for PGM). Values that fit none (negative,
    above 65535, not finite) are refused: any scale would show them wrongly, clipping as black or white.
    """
    if mode.startswith("I;16"):
        scale = 65535.0
    else:
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        scales = ((1.0,) if mode == "F" else ()) + (255.0, 65535.0)
        if not (math.isfinite(low) and math.isfinite(high) and low >= 0 and high <= scales[-1]):
            kind = "floating-point" if mode == "F" else "32-bit integer"
            raise ValueError(
                f"{kind} pixels from {low:g} to {high:g}, on none of the scales "
                f"{', '.join(f'0..{s:g}' for s in scales)}: refused rather than clipped to black or white"
            )
        scale = next(s for s in scales if high <= s)
    out = values.astype(np.float32)  # exact for every 16-bit value; half the memory of float64 on a large image
    out *= np.float32(255 / scale)
    return np.rint(out, out=out).astype(np.uint8)


def decode_image(
    data: bytes,
    resolution: int | None,
    fit: str = "squash",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    rng: random.Random | None = None,
    draft: bool = True,
) -> np.ndarray:
    """One image file to (resolution, resolution, 3) RGB uint8, upright, by `fit` (module docstring); at its own
    size when `resolution` is None. `rng` places random_crop's window (None: the centre, as eval and predict
    always want); `draft=False` decodes every JPEG at full size (for the benchmark's comparison)."""
    scales_down = draft and fit in (Fit.SQUASH, Fit.RESIZE_CROP)
    with open_image(data, max_pixels, draft=resolution if scales_down else None) as img:
        rgb = to_rgb(img)
    return np.asarray(fit_image(rgb, resolution, fit, rng) if resolution else rgb, dtype=np.uint8)


def cover(img: Image.Image, side: int) -> Image.Image:
    """`img` at its own pixels, or scaled up (aspect kept) when its short side is under `side`, so that a
    side x side window fits in it."""
    scale = side / min(img.size)
    if scale <= 1:
        return img
    return img.resize((max(side, round(img.width * scale)), max(side, round(img.height * scale))), RESAMPLE)


def fit_image(img: Image.Image, resolution: int, fit: str, rng: random.Random | None = None) -> Image.Image:
    """`img` made resolution x resolution by `fit`. The crop fits take a square window of the image: `resolution`
    pixels wide at native scale, or the whole short side (resize_crop, and any image whose short side is under
    `resolution`), which is then scaled to `resolution` in the same step (Pillow's resize box)."""
    width, height = img.size
    if fit == Fit.SQUASH:
        return img if img.size == (resolution, resolution) else img.resize((resolution, resolution), RESAMPLE)
    check_fit(fit)
    side = min(width, height) if fit == Fit.RESIZE_CROP or min(width, height) < resolution else resolution
    if fit == Fit.RANDOM_CROP and rng is not None:
        left, top = rng.randint(0, width - side), rng.randint(0, height - side)
    else:
        left, top = (width - side) // 2, (height - side) // 2
    box = (left, top, left + side, top + side)
    return img.crop(box) if side == resolution else img.resize((resolution, resolution), RESAMPLE, box=box)
