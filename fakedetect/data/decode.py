"""Decode image bytes to fixed-size uint8 arrays, in parallel, once; later runs load the cached array.

Kept free of torch so that decoding worker processes start fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fakedetect.data.sources import Entry, Source
from fakedetect.utils.errors import ConfigError

log = logging.getLogger(__name__)

CACHE_VERSION = 1
CHUNK = 2048


class BadImageError(ConfigError):
    """An image file could not be decoded and the configuration says not to skip it."""


@dataclass
class Decoded:
    """Images as (N, H, W, 3) uint8 with their labels and split names, and the files that failed."""

    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    names: list[str]
    skipped: list[str]


def decode_image(data: bytes, resolution: int | None) -> np.ndarray:
    """One image of any mode (RGB, L, RGBA, P, CMYK) to RGB uint8, squashed to resolution x resolution."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = img.convert("RGBA").convert("RGB") if img.mode in ("P", "LA", "PA") else img.convert("RGB")
    if resolution and rgb.size != (resolution, resolution):
        rgb = rgb.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def _decode_chunk(args: tuple[list[bytes], int | None]) -> list[np.ndarray | str]:
    blobs, resolution = args
    out: list[np.ndarray | str] = []
    for blob in blobs:
        try:
            out.append(decode_image(blob, resolution))
        except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file, reported by name
            out.append(f"{type(err).__name__}: {err}")
    return out


def decode_entries(
    source: Source, entries: list[Entry], resolution: int, workers: int | None = None, skip_bad: bool = True
) -> Decoded:
    """Read entries in the source's fastest order, decode them on every core, return them in entry order."""
    order = {e.name: i for i, e in enumerate(entries)}
    names, blobs = [], []
    for name, data in source.read(order):
        names.append(name)
        blobs.append(data)
    workers = workers or os.cpu_count() or 1
    chunks = [(blobs[i : i + CHUNK], resolution) for i in range(0, len(blobs), CHUNK)]
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = [r for chunk in pool.map(_decode_chunk, chunks) for r in chunk]
    else:
        results = [r for chunk in map(_decode_chunk, chunks) for r in chunk]
    position = [order[n] for n in names]
    images = np.empty((len(entries), resolution, resolution, 3), dtype=np.uint8)
    keep = np.zeros(len(entries), dtype=bool)
    skipped = []
    for i, name, result in zip(position, names, results, strict=True):
        if isinstance(result, str):
            if not skip_bad:
                raise BadImageError(f"cannot decode {source.path}/{name}: {result}")
            log.warning("skipping unreadable image %s/%s: %s", source.path, name, result)
            skipped.append(name)
            continue
        images[i] = result
        keep[i] = True
    kept = [e for e, k in zip(entries, keep, strict=True) if k]
    return Decoded(
        images=images[keep],
        labels=np.array([e.label for e in kept], dtype=np.int64),
        splits=np.array([e.split for e in kept]),
        names=[e.name for e in kept],
        skipped=sorted(skipped),
    )


def cache_key(*parts: object) -> str:
    return hashlib.sha1(json.dumps([CACHE_VERSION, *parts], default=str).encode()).hexdigest()[:16]


def save_cache(folder: Path, decoded: Decoded) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    np.save(tmp / "images.npy", decoded.images)
    np.save(tmp / "labels.npy", decoded.labels)
    np.save(tmp / "splits.npy", decoded.splits)
    (tmp / "meta.json").write_text(json.dumps({"names": decoded.names, "skipped": decoded.skipped}))
    for f in tmp.iterdir():
        os.replace(f, folder / f.name)
    tmp.rmdir()


def load_cache(folder: Path) -> Decoded | None:
    if not (folder / "meta.json").exists():
        return None
    meta = json.loads((folder / "meta.json").read_text())
    return Decoded(
        images=np.load(folder / "images.npy"),
        labels=np.load(folder / "labels.npy"),
        splits=np.load(folder / "splits.npy"),
        names=meta["names"],
        skipped=meta["skipped"],
    )
