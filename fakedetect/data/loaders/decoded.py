"""What the memory and cached loaders share: the source decoded once into a memory-mapped cache, keyed by every
setting that changes its pixels, and the splits and statistics taken from it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fakedetect.data.cache import Decoded, decode_entries, load_cache
from fakedetect.data.decode import BadImageError
from fakedetect.data.loaders.base import Loader, listing
from fakedetect.data.sources import Source
from fakedetect.data.splits import Plan, Split, plan
from fakedetect.data.statistics import Statistics, channel_stats, train_statistics

if TYPE_CHECKING:
    from fakedetect.data.config import DataConfig

log = logging.getLogger(__name__)


def cache_folder(config: DataConfig, source: Source) -> Path:
    """The decoded cache of this source and these settings (readable names, the key for the rest)."""
    key = config.pixel_key(source.identity())
    return config.cache_dir / f"{Path(config.root).name}-{config.resolution}px-{config.fit}-{key}"


def decoded(config: DataConfig, timings: dict[str, float]) -> Decoded:
    """The decoded images, memory-mapped from the cache; decoded on every core and cached first if need be."""
    source = Source.open(config.root, config.max_file_bytes)
    folder = cache_folder(config, source)
    start = time.perf_counter()
    cached = load_cache(folder)
    if cached is not None:
        if cached.skipped and not config.skip_bad:
            # The cache was written by a run that skipped these files; skip_bad=false must still stop.
            raise BadImageError(
                f"cannot decode {source.path}/{cached.skipped[0]} "
                f"({len(cached.skipped)} unreadable, recorded in cache {folder})"
            )
        timings["cache_load_s"] = time.perf_counter() - start
        return cached
    images = decode_entries(
        source,
        listing(config, source),
        config.resolution,
        fit=config.fit,
        workers=config.decode_workers,
        skip_bad=config.skip_bad,
        max_pixels=config.max_pixels,
        folder=folder,
    )
    timings["decode_s"] = time.perf_counter() - start
    log.info(
        "decoded %d images from %s in %.1f s (%d unreadable skipped); cache %s",
        len(images.labels),
        config.root,
        timings["decode_s"],
        len(images.skipped),
        folder,
    )
    return images


class DecodedLoader(Loader):
    """A loader of the decoded cache (read by `plan`); subclasses say how its rows become batches."""

    _decoded: Decoded | None = None

    def prepare(self) -> None:
        decoded(self.config, self.timings)

    def plan(self) -> Plan:
        self._decoded = decoded(self.config, self.timings)
        return plan(self._decoded, self.config, self._decoded.skipped)

    @property
    def decoded_images(self) -> np.ndarray:
        """The memory-mapped images the splits index, there once `plan` has run."""
        if self._decoded is None:
            raise RuntimeError(f"data.loader={self.name} reads the decoded images, which setup() has not read")
        return self._decoded.images

    def statistics(self, plan: Plan) -> Statistics:
        train = plan.splits["train"]
        return train_statistics(
            self.config,
            Source.open(self.config.root).identity(),
            len(train),
            lambda: channel_stats(self.decoded_images, self.config.channels, train.index),
        )

    def images(self, part: Split) -> np.ndarray:
        return np.asarray(self.decoded_images[part.index])
