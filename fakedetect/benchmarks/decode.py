"""How fast images decode, and how much memory caching a folder takes (the `python -m fakedetect.decode_bench`
command: `root=FOLDER [mode=speed|cache|generate]`).

- speed: images/s of `decode_image` over the folder's JPEGs (read into memory first, so only decoding is timed; one
  process), to `resolution` by `fit`, with and without JPEG draft mode; the median of `repeats` passes.
- cache: caches the whole folder as training does (`decode_entries` into a fresh cache folder, `workers`
  processes) while sampling the resident memory of this process and its workers; peak and baseline RSS.
- generate: writes `count` large JPEGs (`size` px, noisy photo-like content) into root, to measure caching at scale.
"""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import tempfile
import time
from pathlib import Path, PurePosixPath

import numpy as np
import psutil
from PIL import Image

from fakedetect.data.cache import decode_entries
from fakedetect.data.decode import decode_image
from fakedetect.data.layouts import IMAGE_SUFFIXES, Entry
from fakedetect.data.sources import FolderSource
from fakedetect.utils.errors import ConfigError
from fakedetect.utils.processes import worker_pool
from fakedetect.utils.sampling import Sampler

log = logging.getLogger(__name__)

JPEG_SUFFIXES = (".jpg", ".jpeg")
# noise fields generated once and shifted per file: every file differs, generation stays fast
NOISE_FIELDS = 8


def image_names(source: FolderSource, suffixes: tuple[str, ...] | set[str] = tuple(IMAGE_SUFFIXES)) -> list[str]:
    names = sorted(n for n in source.names() if PurePosixPath(n).suffix.lower() in suffixes)
    if not names:
        raise ConfigError(f"root={source.path}: no {' '.join(sorted(suffixes))} files in it")
    return names


def decode_speed(root: str, resolution: int, fit: str, repeats: int) -> dict:
    """Images/s decoding the folder's JPEGs, with draft mode and without: median and every pass."""
    source = FolderSource(root)
    blobs = [source.read_one(n) for n in image_names(source, JPEG_SUFFIXES)]
    result = {"images": len(blobs), "resolution": resolution, "fit": fit}
    for draft in (True, False):
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            for blob in blobs:
                decode_image(blob, resolution, fit, draft=draft)
            rates.append(len(blobs) / (time.perf_counter() - start))
        result["draft" if draft else "no_draft"] = {"median_images_s": statistics.median(rates), "passes": rates}
    return result


class PeakMemory(Sampler):
    """Samples the resident memory of this process plus its children every `interval` s, in a thread."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(interval)
        self.peak, self.peak_main = 0, 0
        self._me = psutil.Process()

    def sample(self) -> bool:
        total = main = self._me.memory_info().rss
        for child in self._me.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a worker that just exited
                total += child.memory_info().rss
        self.peak, self.peak_main = max(self.peak, total), max(self.peak_main, main)
        return True


def cache_memory(root: str, resolution: int, fit: str, workers: int | None) -> dict:
    """Peak RSS (this process and its workers) while the folder is decoded into a fresh cache folder."""
    source = FolderSource(root)
    names = image_names(source)
    folder_bytes = sum((source.path / n).stat().st_size for n in names)
    entries = [Entry(n, "", 0, "") for n in names]
    baseline = psutil.Process().memory_info().rss
    with tempfile.TemporaryDirectory(prefix="decode-bench-") as tmp, PeakMemory() as memory:
        start = time.perf_counter()
        decoded = decode_entries(source, entries, resolution, workers, fit=fit, folder=Path(tmp) / "cache")
        seconds = time.perf_counter() - start
        cache_bytes = sum(p.stat().st_size for p in (Path(tmp) / "cache").iterdir())
    return {
        "images": len(decoded.names),
        "skipped": len(decoded.skipped),
        "folder_gb": folder_bytes / 1e9,
        "cache_gb": cache_bytes / 1e9,
        "seconds": seconds,
        "images_s": len(names) / seconds,
        "baseline_rss_mb": baseline / 2**20,
        "peak_rss_mb": memory.peak / 2**20,
        "peak_rss_main_mb": memory.peak_main / 2**20,
        "workers": workers,
        "resolution": resolution,
        "fit": fit,
    }


def _write_jpegs(args: tuple[Path, list[int], int, int]) -> None:
    root, numbers, size, seed = args
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    fields = [rng.normal(0, 16, (size, size, 3)).astype(np.float32) for _ in range(NOISE_FIELDS)]
    for i in numbers:
        phase = rng.uniform(0, 6)
        base = np.stack([np.sin(6 * x + 3 * y + phase), np.cos(5 * y + phase) * x, x * y], axis=-1) * 100 + 120
        noise = np.roll(fields[i % NOISE_FIELDS], tuple(rng.integers(0, size, 2)), axis=(0, 1))
        buf = io.BytesIO()
        Image.fromarray((base + noise).clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=94)
        (root / f"{i:05d}.jpg").write_bytes(buf.getvalue())


def generate(root: str, count: int, size: int, workers: int) -> dict:
    """`count` size x size JPEGs of smooth content under noise (~2 MB each at 2048 px) in root."""
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    parts = [(path, list(range(w, count, workers)), size, w) for w in range(workers)]
    with worker_pool(workers) as pool:
        list(pool.map(_write_jpegs, parts))
    total = sum(p.stat().st_size for p in path.glob("*.jpg"))
    return {"files": count, "size": size, "folder_gb": total / 1e9}
