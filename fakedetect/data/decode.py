"""Decode image bytes to fixed-size uint8 arrays, in parallel, once; later runs load the cached array.

Kept free of torch so that decoding worker processes start fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fakedetect.data.sources import Entry, Source
from fakedetect.utils.errors import ConfigError

log = logging.getLogger(__name__)

# 2: EXIF orientation applied, 16-bit images scaled, folder identity with sizes and mtimes; 3: files' digests
CACHE_VERSION = 3
CHUNK = 2048
# images above this many pixels are refused before their pixels are decoded (data.max_pixels; None: no limit)
DEFAULT_MAX_PIXELS = 8192 * 8192


class BadImageError(ConfigError):
    """An image file could not be decoded and the configuration says not to skip it."""


@dataclass
class Decoded:
    """Images as (N, H, W, 3) uint8 with their labels, split names and files' digests, and the files that failed."""

    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    names: list[str]
    skipped: list[str]
    digests: np.ndarray  # file_digest of each image's encoded bytes, as DIGEST ASCII


# the dtype of an array of file digests (SHA-1 in hex); b"" marks a file that could not be read
DIGEST = "S40"


def file_digest(data: bytes) -> str:
    """The byte identity of an encoded file: the data audit's duplicate groups and the test split's duplicate
    mask both compare files by it, so the two always agree."""
    return hashlib.sha1(data).hexdigest()


def digest_entries(source: Source, entries: list[Entry]) -> np.ndarray:
    """The digests of entries' bytes in entry order, in one pass over the source (for the stream loader, whose
    decoding never holds every file's bytes at once); an unreadable file gets b""."""
    found = {name: file_digest(data) if isinstance(data, bytes) else ""
             for name, data in source.read([e.name for e in entries])}
    return np.array([found.get(e.name, "") for e in entries], dtype=DIGEST)


def open_image(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and load one image file, upright (its EXIF orientation applied).

    An image over `max_pixels` is an error, raised from its header before the pixels are decoded: Pillow's own
    decompression-bomb check, with its limit set for this call only (decoding runs in processes, not threads)
    and its warning made an error instead of silenced.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's notes on odd but readable files (palette transparency, EXIF)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        default, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
            raise ValueError(f"over data.max_pixels={max_pixels}, a possible decompression bomb ({err})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = default
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode (RGB, L, RGBA, P, CMYK, 16-bit greyscale) to 8-bit RGB."""
    if img.mode.startswith("I"):
        # 16-bit greyscale (I;16*, or I): 0..65535 scaled to 0..255, where Pillow's convert would clip it to white
        grey = np.rint(np.asarray(img).astype(np.float64) / 257).clip(0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return img.convert("RGBA").convert("RGB") if img.mode in ("P", "LA", "PA") else img.convert("RGB")


def decode_image(data: bytes, resolution: int | None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """One image file to RGB uint8, upright, squashed to resolution x resolution."""
    with open_image(data, max_pixels) as img:
        rgb = to_rgb(img)
    if resolution and rgb.size != (resolution, resolution):
        rgb = rgb.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def _decode_chunk(args: tuple[list[bytes | str], int | None, int | None]) -> list[np.ndarray | str]:
    blobs, resolution, max_pixels = args
    out: list[np.ndarray | str] = []
    for blob in blobs:
        if isinstance(blob, str):  # the file could not even be read: the reason, from the source
            out.append(blob)
            continue
        try:
            out.append(decode_image(blob, resolution, max_pixels))
        except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file, reported by name
            out.append(f"{type(err).__name__}: {err}")
    return out


def decode_entries(
    source: Source, entries: list[Entry], resolution: int, workers: int | None = None, skip_bad: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Decoded:
    """Read entries in the source's fastest order, decode them on every core, return them in entry order."""
    order = {e.name: i for i, e in enumerate(entries)}
    names, blobs, digests = [], [], []
    for name, data in source.read(order):
        names.append(name)
        blobs.append(data)
        digests.append(file_digest(data) if isinstance(data, bytes) else "")
    workers = workers or os.cpu_count() or 1
    chunks = [(blobs[i : i + CHUNK], resolution, max_pixels) for i in range(0, len(blobs), CHUNK)]
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = [r for chunk in pool.map(_decode_chunk, chunks) for r in chunk]
    else:
        results = [r for chunk in map(_decode_chunk, chunks) for r in chunk]
    position = [order[n] for n in names]
    images = np.empty((len(entries), resolution, resolution, 3), dtype=np.uint8)
    keep = np.zeros(len(entries), dtype=bool)
    in_order = np.empty(len(entries), dtype=DIGEST)
    skipped = []
    for i, name, result, digest in zip(position, names, results, digests, strict=True):
        if isinstance(result, str):
            if not skip_bad:
                raise BadImageError(f"cannot decode {source.path}/{name}: {result}")
            log.warning("skipping unreadable image %s/%s: %s", source.path, name, result)
            skipped.append(name)
            continue
        images[i] = result
        in_order[i] = digest
        keep[i] = True
    kept = [e for e, k in zip(entries, keep, strict=True) if k]
    return Decoded(
        images=images[keep],
        labels=np.array([e.label for e in kept], dtype=np.int64),
        splits=np.array([e.split for e in kept]),
        names=[e.name for e in kept],
        skipped=sorted(skipped),
        digests=in_order[keep],
    )


def cache_key(*parts: object) -> str:
    return hashlib.sha1(json.dumps([CACHE_VERSION, *parts], default=str).encode()).hexdigest()[:16]


def save_cache(folder: Path, decoded: Decoded) -> None:
    """Write every file into a private folder, then rename that folder into place.

    A reader sees a whole cache or none, whether the writer is killed or another process writes the same key
    at once (the last rename wins; both hold the same images). A cache that cannot be written is a warning.
    """
    tmp = stale = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        np.save(tmp / "images.npy", decoded.images)
        np.save(tmp / "labels.npy", decoded.labels)
        np.save(tmp / "splits.npy", decoded.splits)
        np.save(tmp / "digests.npy", decoded.digests.astype(DIGEST))
        (tmp / "meta.json").write_text(json.dumps({"names": decoded.names, "skipped": decoded.skipped}))
        if folder.exists():  # an unreadable leftover that load_cache refused, or another writer's: set it aside
            stale = Path(tempfile.mkdtemp(prefix=f".{folder.name}.stale-", dir=folder.parent))
            os.replace(folder, stale / "old")
        os.replace(tmp, folder)
    except OSError as err:  # a read-only cache folder, or another writer renamed its copy in at the same moment
        log.warning("decode cache %s not written by this run: %s", folder, err)
    finally:
        for leftover in (tmp, stale):
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)


def load_cache(folder: Path) -> Decoded | None:
    """The cached decode, or None when there is none or it is unreadable (then it is decoded and written again)."""
    if not folder.exists():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        # memory-mapped first: a truncated file fails here, from its header, before anything is read
        arrays = {k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in ("images", "labels", "splits", "digests")}
        if len({len(meta["names"]), *(len(a) for a in arrays.values())}) != 1:
            raise ValueError("its files disagree on the number of images")
        return Decoded(images=np.array(arrays["images"]), labels=np.array(arrays["labels"]),
                       splits=np.array(arrays["splits"]), names=list(meta["names"]), skipped=list(meta["skipped"]),
                       digests=np.array(arrays["digests"]).astype(DIGEST))
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("ignoring the unreadable decode cache %s (%s: %s); decoding again", folder, type(err).__name__, err)
        return None
