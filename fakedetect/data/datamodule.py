"""One LightningDataModule for every model and dataset: it plans the splits and hands each to a loader.

Listing and labels live in `layouts.py`, decoding in `decode.py`, the decoded cache in `cache.py`, batches in
`loaders.py`; this module decides which image belongs to which split and wires the loader `data.loader` names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol, runtime_checkable

import fsspec
import lightning as L
import numpy as np
import torch
from torch import Tensor

from fakedetect.data.augment import BatchAugment
from fakedetect.data.batch import Batch
from fakedetect.data.cache import Decoded, cache_key, decode_entries, digest_entries, load_cache
from fakedetect.data.decode import DEFAULT_MAX_PIXELS, DIGEST, FITS, BadImageError
from fakedetect.data.layouts import LAYOUTS, DataLayoutError, Entry, Listing
from fakedetect.data.loaders import (
    CachedBatches,
    CacheRows,
    DeviceBatches,
    EpochOrder,
    KeptBatches,
    StreamDataset,
    StreamLoader,
    StreamTrainLoader,
    collate_skipping,
    litdata_loader,
)
from fakedetect.data.pixels import LUMA
from fakedetect.data.sources import Source
from fakedetect.utils.errors import ConfigError, is_int, is_number, require, require_each

log = logging.getLogger(__name__)

# the smallest side length in pixels a run may decode to; below it no net here has anything to learn from
MIN_RESOLUTION = 8
LOADERS = ("memory", "cached", "stream", "litdata")
SPLITS = ("train", "val", "test")
# what pack writes beside the chunks: the planned splits, their files and the normalization statistics
PACK_META = "fakedetect_pack.json"
# rows moved to the device at a time: the memory loader never copies a whole split into RAM first
DEVICE_CHUNK = 8192


@runtime_checkable
class TakesStatistics(Protocol):
    """A LightningModule that keeps the normalization statistics as buffers (Detector)."""

    has_statistics: bool

    def set_statistics(self, mean: Sequence[float], std: Sequence[float]) -> None: ...


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, carved) with `fraction` of every class carved out, reproducibly for a seed."""
    rng = np.random.default_rng(seed)
    kept, carved = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(fraction * len(idx)))
        carved.append(idx[:k])
        kept.append(idx[k:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(carved))


def stratified_sample(entries: list[Entry], limit: int | None, seed: int) -> list[Entry]:
    """At most `limit` entries, the same number from every class (a quick subset for tests and sweeps)."""
    if not limit or limit >= len(entries):
        return entries
    labels = np.array([e.label for e in entries])
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    per_class = limit // len(classes)
    picked = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes])
    return [entries[i] for i in np.sort(picked)]


def plan_splits(
    labels: np.ndarray,
    split_names: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    excluded: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Row indices of train, val and test: `val/` and `test/` folders as given; what is missing is carved,
    stratified, from the train rows (or from every row of a source without split folders): test by
    `test_fraction` (1.0: all of it), then val by `val_fraction` after the `excluded` rows leave train."""
    pool = np.flatnonzero((split_names == "train") | (split_names == ""))
    test = np.flatnonzero(split_names == "test")
    if not len(test):
        kept, carved = stratified_split(labels[pool], test_fraction, seed)
        pool, test = pool[kept], pool[carved]
    if excluded is not None:
        pool = pool[~excluded[pool]]
    val = np.flatnonzero(split_names == "val")
    if not len(val):
        kept, carved = stratified_split(labels[pool], val_fraction, seed)
        pool, val = pool[kept], pool[carved]
    # A fixed shuffle, so that any prefix of val or test (limit_val_batches, say) holds both classes.
    rng = np.random.default_rng(seed)
    return {"train": pool, "val": rng.permutation(val), "test": rng.permutation(test)}


def channel_stats(
    images: np.ndarray, channels: int, index: np.ndarray | None = None, chunk: int = 8192
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] of (N, H, W, 3) uint8 images (the `index` rows of them), in chunks:
    memory stays bounded, and a memory-mapped cache is read once, in file order."""
    rows = np.sort(index) if index is not None else None
    n = len(rows) if rows is not None else len(images)
    total = np.zeros(channels)
    squares = np.zeros(channels)
    count = 0
    for i in range(0, n, chunk):
        x = (images[rows[i : i + chunk]] if rows is not None else images[i : i + chunk]).astype(np.float64) / 255.0
        if channels == 1:
            x = (x @ np.array(LUMA))[..., None]
        total += x.sum(axis=(0, 1, 2))
        squares += (x**2).sum(axis=(0, 1, 2))
        count += x.shape[0] * x.shape[1] * x.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


def copies_of(digests: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Which of `digests` also occur in `pool` (files byte for byte the same); an unread file's b"" matches none."""
    return np.isin(digests, pool[pool != b""]) & (digests != b"")


@dataclass
class Split:
    """One split: its rows in the decoded cache (memory, cached), the listing (stream) or the packed chunks
    (litdata), with their labels and source indices (into `ImageDataModule.source_names`)."""

    index: np.ndarray
    labels: np.ndarray
    sources: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Listed:
    """Every image the splits are planned from, in one order."""

    labels: np.ndarray
    splits: np.ndarray
    names: list[str]
    sources: np.ndarray  # source names (str)
    digests: np.ndarray


class ImageDataModule(L.LightningDataModule):
    """Binary real/fake images with FAKE = 1 the positive class (the order of `classes`).

    Batches are (uint8 images NCHW, int64 labels, int64 sources) from every loader; `on_after_batch_transfer`
    turns them into (normalized float images, labels) on the training device, with greyscale and augmentation.

    `test_duplicates` marks, in the order of `test_names`, the test images byte-identical to a file of this run's
    train or val split (CIFAKE has hundreds); `dedup_test_dataloader` leaves them out, for `test/acc_dedup`.
    """

    def __init__(
        self,
        root: str,
        classes: tuple[str, ...] | list[str] = ("REAL", "FAKE"),
        resolution: int = 32,
        channels: int = 3,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 42,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        loader: str = "memory",
        num_workers: int = 2,
        train_limit: int | None = None,
        test_limit: int | None = None,
        cache_dir: str | None = None,
        skip_bad: bool = True,
        augment: BatchAugment | None = None,
        normalize: bool = True,
        stats_sample: int = 20000,
        decode_workers: int | None = None,
        exclude: str | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        fit: str = "squash",
        aliases: Mapping[str, Iterable[str]] | None = None,
        layout: str = "auto",
        manifest: str | None = None,
        train_sources: Iterable[str] | None = None,
        litdata_dir: str | None = None,
    ) -> None:
        super().__init__()
        _check_arguments(locals())
        self.root, self.classes = str(root), list(classes)
        self.resolution, self.channels, self.fit = resolution, channels, fit
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.loader, self.num_workers = loader, num_workers
        self.train_limit, self.test_limit = train_limit, test_limit
        self.cache_dir = Path(cache_dir) if cache_dir else Path("data/cache")
        self.skip_bad, self.normalize, self.stats_sample = skip_bad, normalize, stats_sample
        self.decode_workers, self.max_pixels = decode_workers, max_pixels
        self.exclude = exclude
        self.aliases = {str(k): [str(a) for a in v] for k, v in aliases.items()} if aliases is not None else None
        self.layout, self.manifest = layout, manifest
        self.train_sources = sorted(str(s) for s in train_sources) if train_sources is not None else None
        self.litdata_dir = litdata_dir
        self.augment = augment or BatchAugment()
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        self.skipped: list[str] = []
        self.timings: dict[str, float] = {}
        self.splits: dict[str, Split] = {}
        self.source_names: list[str] = []
        self.test_names: list[str] = []
        self.test_duplicates: np.ndarray | None = None
        self.duplicate_groups = 0
        self._data: Decoded | None = None
        self._entries: list[Entry] = []
        self._on_device: dict[tuple[str, str], tuple[Tensor, Tensor, Tensor]] = {}
        # degrades every uint8 test batch before the detector sees it (a robustness row); None: clean
        self.test_transform: Callable[[Tensor], Tensor] | None = None

    @property
    def split_sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}

    def split_images(self, split: str) -> np.ndarray:
        """A split's decoded images (N, H, W, 3) in split order, read into RAM: for small data and tests."""
        if self._data is None:
            raise ConfigError(f"a split's images in memory need data.loader=memory or cached, not {self.loader}")
        return np.asarray(self._data.images[self.splits[split].index])

    def _source(self) -> Source:
        return Source.open(self.root)

    def _listing(self, source: Source) -> Listing:
        listing = source.list(self.classes, aliases=self.aliases, layout=self.layout, manifest=self.manifest)
        if listing.ignored:
            log.info(
                "ignored %d non-image or unplaced files in %s, e.g. %s",
                len(listing.ignored),
                self.root,
                listing.ignored[0],
            )
        if listing.not_regular:
            log.warning(
                "skipped %d entries of %s that are not regular files (FIFOs, devices, sockets, broken links), e.g. %s",
                len(listing.not_regular),
                self.root,
                listing.not_regular[0],
            )
        by_split: dict[str, list[Entry]] = {}
        for e in listing.entries:
            by_split.setdefault(e.split, []).append(e)
        limits = {"train": self.train_limit, "": self.train_limit, "val": self.test_limit, "test": self.test_limit}
        picked = [e for s, es in by_split.items() for e in stratified_sample(es, limits[s], self.seed)]
        return Listing(picked, listing.ignored)

    def _listing_key(self, source: Source) -> list:
        """What decides the listed entries. A manifest outside the source counts by its content (one inside it is
        part of the source's identity): edited labels must not reuse a stale cache."""
        manifest = Path(self.manifest).expanduser() if self.manifest else None
        outside = manifest if manifest is not None and manifest.is_absolute() and manifest.is_file() else None
        return [
            source.identity(),
            self.classes,
            self.aliases,
            self.layout,
            self.manifest,
            hashlib.sha1(outside.read_bytes()).hexdigest() if outside is not None else None,
            self.train_limit,
            self.test_limit,
            self.seed if (self.train_limit or self.test_limit) else None,
        ]

    def _cache_folder(self, source: Source) -> Path:
        key = cache_key(*self._listing_key(source), self.resolution, self.fit, self.max_pixels)
        return self.cache_dir / f"{Path(self.root).name}-{self.resolution}px-{self.fit}-{key}"

    def decoded(self) -> Decoded:
        """The decoded images, memory-mapped from the cache; decoded on every core and cached first if need be."""
        source = self._source()
        folder = self._cache_folder(source)
        start = time.perf_counter()
        cached = load_cache(folder)
        if cached is not None:
            if cached.skipped and not self.skip_bad:
                # The cache was written by a run that skipped these files; skip_bad=false must still stop.
                raise BadImageError(
                    f"cannot decode {source.path}/{cached.skipped[0]} "
                    f"({len(cached.skipped)} unreadable, recorded in cache {folder})"
                )
            self.timings["cache_load_s"] = time.perf_counter() - start
            return cached
        listing = self._listing(source)
        decoded = decode_entries(
            source,
            listing.entries,
            self.resolution,
            fit=self.fit,
            workers=self.decode_workers,
            skip_bad=self.skip_bad,
            max_pixels=self.max_pixels,
            folder=folder,
        )
        self.timings["decode_s"] = time.perf_counter() - start
        log.info(
            "decoded %d images from %s in %.1f s (%d unreadable skipped); cache %s",
            len(decoded.labels),
            self.root,
            self.timings["decode_s"],
            len(decoded.skipped),
            folder,
        )
        return decoded

    def prepare_data(self) -> None:
        if self.loader in ("memory", "cached"):
            self.decoded()

    def setup(self, stage: str | None = None) -> None:
        model = self.trainer.lightning_module if self.trainer is not None else None
        needs_statistics = isinstance(model, TakesStatistics) and not model.has_statistics
        # on its own (no trainer), fitting is the stage that takes statistics; evaluating a split needs none
        self._plan(statistics=needs_statistics or (model is None and stage in (None, "fit")))
        if needs_statistics:  # the detector keeps them as buffers: a checkpoint's module needs no data
            assert isinstance(model, TakesStatistics) and self.mean is not None and self.std is not None
            model.set_statistics(self.mean, self.std)

    def _plan(self, statistics: bool = True) -> None:
        """Splits, sources, duplicates and (for a detector without them) normalization statistics, once."""
        if self.splits:
            if statistics and self.mean is None:
                self.mean, self.std = self._stats()
            return
        if self.fit == "random_crop" and self.loader != "stream":
            log.warning(
                "data.fit=random_crop draws a new crop per epoch only with data.loader=stream; the %s "
                "loader's decoded images are centre crops, decoded once",
                self.loader,
            )
        if self.loader == "litdata":
            self._setup_packed()
            return
        if self.loader == "stream":
            rows = self._listed_rows()
        else:
            self._data = self.decoded()
            self.skipped = self._data.skipped
            data = self._data
            rows = Listed(data.labels, data.splits, data.names, data.sources, data.digests)
        self.source_names = sorted(set(rows.sources.tolist()))
        sources = np.searchsorted(self.source_names, rows.sources).astype(np.int64)
        index = plan_splits(
            rows.labels, rows.splits, self.val_fraction, self.test_fraction, self.seed, self._excluded(rows.names)
        )
        if self.train_sources is not None:
            index = self._only_train_sources(index, rows, self.train_sources)
        self._check_classes(index, rows.labels, has_splits=bool((rows.splits != "").any()))
        self.splits = {k: Split(v, rows.labels[v], sources[v]) for k, v in index.items()}
        self.test_names = [rows.names[i] for i in index["test"]]
        self._mark_duplicates(rows.digests[index["test"]], rows.digests[np.concatenate([index["train"], index["val"]])])
        if statistics and self.mean is None:
            self.mean, self.std = self._stats()
        log.info("splits: %s; sources %s", self.split_sizes, self.source_names)

    def _listed_rows(self) -> Listed:
        source = self._source()
        source.check_streamable()
        self._entries = self._listing(source).entries
        return Listed(
            np.array([e.label for e in self._entries], dtype=np.int64),
            np.array([e.split for e in self._entries]),
            [e.name for e in self._entries],
            np.array([e.source for e in self._entries]),
            self._stream_digests(source, self._entries),
        )

    def _excluded(self, names: list[str]) -> np.ndarray | None:
        if not self.exclude:
            return None
        if not Path(self.exclude).is_file():
            raise ConfigError(
                f"data.exclude: no such file {self.exclude} (a list of member names, one a line, "
                "e.g. the data audit's exclude_train.txt)"
            )
        dropped = set(Path(self.exclude).read_text().split("\n"))
        excluded = np.array([n in dropped for n in names], dtype=bool)
        log.info("data.exclude lists %d of these files (%s); they leave train", excluded.sum(), self.exclude)
        return excluded

    def _only_train_sources(
        self, index: dict[str, np.ndarray], rows: Listed, train_sources: list[str]
    ) -> dict[str, np.ndarray]:
        """Train and val keep the fakes of `train_sources` and every real image; test keeps everything."""
        unknown = sorted(set(train_sources) - set(self.source_names))
        if unknown:
            raise ConfigError(
                f"data.train_sources: {unknown} not among the sources of {self.root}: {self.source_names}"
            )
        keep = np.isin(rows.sources, train_sources) | (rows.labels == 0)
        return {k: v[keep[v]] if k != "test" else v for k, v in index.items()}

    def _packed(self, part: str) -> str:
        """A path under data.litdata_dir, which may be an object storage URL (no pathlib for it)."""
        assert self.litdata_dir is not None  # required with loader=litdata, checked at construction
        return f"{self.litdata_dir.rstrip('/')}/{part}"

    def _setup_packed(self) -> None:
        """The splits `python -m fakedetect.pack` planned and wrote, checked against this run's data config."""
        if self.train_sources is not None:
            raise ConfigError(
                "data.train_sources cannot filter packed data (data.loader=litdata): pack with "
                "data.train_sources set instead"
            )
        try:
            with fsspec.open(self._packed(PACK_META), "r") as f:
                meta = json.load(f)
        except (OSError, ValueError) as err:
            raise DataLayoutError(
                f"data.litdata_dir={self.litdata_dir}: no readable {PACK_META} there ({err}); "
                "write the chunks with python -m fakedetect.pack data.root=... "
                "output=DIR"
            ) from None
        packed_from = meta["data"]["root"]
        if _resolved(packed_from) != _resolved(self.root):
            raise ConfigError(
                f"data.root={self.root}, but data.litdata_dir={self.litdata_dir} holds {packed_from}: "
                f"set data.root={packed_from} to train or test on the packed data, or "
                "data.loader=memory (or stream) to read data.root"
            )
        for key in ("classes", "resolution", "fit", "channels"):
            if meta["data"][key] != getattr(self, key):
                raise ConfigError(
                    f"data.{key}={getattr(self, key)!r}, but data.litdata_dir={self.litdata_dir} was "
                    f"packed with {meta['data'][key]!r}: set data.{key}={meta['data'][key]!r} or "
                    "pack again"
                )
        self.source_names, self.skipped = meta["source_names"], meta["skipped"]
        splits = meta["splits"]
        self.splits = {
            s: Split(
                np.arange(len(splits[s]["labels"])),
                np.array(splits[s]["labels"], dtype=np.int64),
                np.array(splits[s]["sources"], dtype=np.int64),
            )
            for s in SPLITS
        }
        digests = {s: np.array(splits[s]["digests"], dtype=DIGEST) for s in SPLITS}
        self.test_names = splits["test"]["names"]
        self._mark_duplicates(digests["test"], np.concatenate([digests["train"], digests["val"]]))
        if self.mean is None:
            self.mean, self.std = meta["mean"], meta["std"]
        log.info("packed splits from %s: %s; sources %s", self.litdata_dir, self.split_sizes, self.source_names)

    def _mark_duplicates(self, test: np.ndarray, pool: np.ndarray) -> None:
        self.test_duplicates = copies_of(test, pool)
        self.duplicate_groups = len(np.unique(test[self.test_duplicates]))
        if self.duplicate_groups:
            log.info(
                "%d test images (%d distinct files) are byte-identical to train or val images; "
                "test/acc_dedup leaves them out",
                self.test_duplicates.sum(),
                self.duplicate_groups,
            )

    def _stream_digests(self, source: Source, entries: list[Entry]) -> np.ndarray:
        """The files' digests for the stream loader: one pass over the source's bytes, cached beside the decode
        caches under the source's identity (which changes with any file's size or modification time)."""
        key = cache_key("digests", *self._listing_key(source))
        path = self.cache_dir / "digests" / f"{key}.json"
        names = [e.name for e in entries]
        try:
            cached = json.loads(path.read_text())
            if cached["names"] == names:
                return np.array(cached["digests"], dtype=DIGEST)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("ignoring the unreadable digest cache %s (%s); reading the files again", path, err)
        start = time.perf_counter()
        digests = digest_entries(source, entries)
        self.timings["digest_s"] = time.perf_counter() - start
        log.info(
            "hashed %d files of %s in %.1f s, to find test images duplicated in train",
            len(entries),
            self.root,
            self.timings["digest_s"],
        )
        _write_atomic(path, json.dumps({"names": names, "digests": digests.astype(str).tolist()}))
        return digests

    def _check_classes(self, index: dict[str, np.ndarray], labels: np.ndarray, has_splits: bool) -> None:
        """Every split must hold every class, after decoding, limits and exclusions: a test split of one class
        would report a perfect accuracy that means nothing. With test_fraction=1 (evaluation of a whole source)
        train and val may be empty."""
        for split, idx in index.items():
            if (split == "val" and not self.val_fraction and not len(idx)) or (
                split != "test" and self.test_fraction == 1 and not len(idx)
            ):
                continue
            counts = np.bincount(labels[idx], minlength=len(self.classes))
            for c in np.flatnonzero(counts == 0):
                cls = self.classes[c]
                folder = f"{split}/{cls}" if has_splits else cls
                bad = [n for n in self.skipped if PurePosixPath(n).parent.as_posix().lower().endswith(folder.lower())]
                if bad:
                    why = (
                        f"its {len(bad)} files in '{folder}' are unreadable (e.g. {bad[0]}); replace them, or "
                        "list them with python -m fakedetect.audit"
                    )
                elif split == "val":
                    why = (
                        f"data.val_fraction={self.val_fraction} carves none of the '{folder}' images; raise it, "
                        "add images, or set data.val_fraction=0 to train without validation"
                    )
                elif c == 1 and self.train_sources is not None and split != "test":
                    why = f"data.train_sources={self.train_sources} has no fakes in it"
                else:
                    why = (
                        f"none of the '{folder}' images is left after data.train_limit, data.test_limit and "
                        "data.exclude; add images or relax those"
                    )
                raise DataLayoutError(f"{self.root}: the {split} split has no {cls} images: {why}")

    def _stats(self) -> tuple[list[float], list[float]]:
        """Normalization statistics of the train split (never val or test), cached beside the images."""
        if not self.normalize:
            return [0.0] * self.channels, [1.0] * self.channels
        if not len(self.splits["train"]):
            raise ConfigError(
                f"data.test_fraction={self.test_fraction} leaves no train images to take "
                "normalization statistics from: use it to evaluate a checkpoint, which brings them"
            )
        source = self._source()
        key = cache_key(
            *self._listing_key(source),
            self.resolution,
            self.fit,
            self.channels,
            self.val_fraction,
            self.test_fraction,
            self.seed,
            self.exclude,
            self.max_pixels,
            self.train_sources,
            self.stats_sample if self.loader == "stream" else None,
        )
        path = self.cache_dir / "stats" / f"{key}.json"
        try:
            stats = json.loads(path.read_text())
            return [float(m) for m in stats["mean"]], [float(s) for s in stats["std"]]
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("ignoring the unreadable statistics cache %s (%s); computing them again", path, err)
        if self._data is not None:
            mean, std = channel_stats(self._data.images, self.channels, self.splits["train"].index)
        else:
            train = [self._entries[i] for i in self.splits["train"].index]
            sample = stratified_sample(train, self.stats_sample, self.seed)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            # decoded into a memory-mapped scratch file: 20,000 images at 224 px would be 3 GB of RAM
            with tempfile.TemporaryDirectory(prefix=".stats-", dir=self.cache_dir) as scratch:
                # Unreadable files are skipped (or raise, with skip_bad=false) as everywhere else, not a crash here.
                images = decode_entries(
                    source,
                    sample,
                    self.resolution,
                    fit=self.fit,
                    workers=self.decode_workers,
                    skip_bad=self.skip_bad,
                    max_pixels=self.max_pixels,
                    folder=Path(scratch) / "sample",
                ).images
                if not len(images):
                    raise DataLayoutError(
                        f"{self.root}: none of the {len(sample)} train images sampled for the "
                        "normalization statistics could be decoded; check them with "
                        "python -m fakedetect.audit"
                    )
                mean, std = channel_stats(images, self.channels)
                del images
        _write_atomic(path, json.dumps({"mean": mean, "std": std}))
        return mean, std

    def on_after_batch_transfer(self, batch: Sequence[Tensor] | None, dataloader_idx: int) -> Batch | None:
        """The batch on the training device, training's augmented (floats in [0, 1]), a robustness pass's degraded
        by `test_transform`; the detector preprocesses it."""
        if batch is None:  # a streamed training batch of only unreadable files, which Lightning skips
            return None
        images, labels, sources = batch[:3]
        duplicates = batch[3] if len(batch) > 3 else torch.zeros_like(labels, dtype=torch.bool)
        if self.trainer is not None and self.trainer.training:
            images = self.augment(images.float().div_(255))
        elif self.test_transform is not None and self.trainer is not None and self.trainer.testing:
            images = self.test_transform(images)
        return Batch(images, labels, sources, duplicates)

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _rank(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)

    @property
    def _images(self) -> np.ndarray:
        """The decoded images the memory and cached loaders read, there once setup has run."""
        if self._data is None:
            raise RuntimeError(f"data.loader={self.loader} reads the decoded images, which setup() has not read")
        return self._data.images

    def _on_the_device(self, split: str, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """A split's images, labels and sources on the device, copied over in chunks from the memory map."""
        if (split, str(device)) not in self._on_device:
            part = self.splits[split]
            h, w = self._images.shape[1:3]
            images = torch.empty((len(part), 3, h, w), dtype=torch.uint8, device=device)
            for i in range(0, len(part), DEVICE_CHUNK):
                rows = np.ascontiguousarray(self._images[part.index[i : i + DEVICE_CHUNK]])
                images[i : i + len(rows)] = torch.from_numpy(rows).to(device).permute(0, 3, 1, 2)
            self._on_device[(split, str(device))] = (
                images,
                torch.from_numpy(part.labels).to(device),
                torch.from_numpy(part.sources).to(device),
            )
        return self._on_device[(split, str(device))]

    def _loader(self, split: str, train: bool, keep: np.ndarray | None = None) -> Iterable:
        """The split's loader for this process; with `keep` (a mask of the split), that part of it, whole."""
        batch = self.batch_size if train else self.eval_batch_size
        rank, world = self._rank() if keep is None else (0, 1)
        part = self.splits[split]
        positions = np.flatnonzero(keep) if keep is not None else np.arange(len(part))
        drop_last = train and len(positions) >= batch * world
        pin = self._device().type == "cuda"
        order = EpochOrder(
            len(positions), batch, shuffle=train, seed=self.seed, rank=rank, world_size=world, drop_last=drop_last
        )
        if self.loader == "memory":
            images, labels, sources = self._on_the_device(split, self._device())
            if keep is not None:
                where = torch.from_numpy(positions).to(images.device)
                images, labels, sources = images[where], labels[where], sources[where]
            return DeviceBatches(images, labels, sources, order)
        if self.loader == "cached":
            rows = CacheRows(self._images, part.index[positions], part.labels[positions], part.sources[positions])
            return CachedBatches(rows, order, self.num_workers, pin)
        if self.loader == "litdata" and not len(positions):  # pack writes no chunks for an empty split
            empty = torch.empty(0, dtype=torch.int64)
            return DeviceBatches(
                torch.empty((0, 3, self.resolution, self.resolution), dtype=torch.uint8), empty, empty, order
            )
        if self.loader == "litdata":
            # one worker for val and test: LitData then yields the split in its packed order, which dedup relies on
            loader = litdata_loader(
                self._packed(split),
                batch,
                shuffle=train,
                seed=self.seed,
                num_workers=self.num_workers if train else min(self.num_workers, 1),
                drop_last=drop_last,
                pin_memory=pin,
            )
            return KeptBatches(loader, keep) if keep is not None else loader
        dataset = StreamDataset(
            self._source(),
            [self._entries[i] for i in part.index[positions]],
            part.sources[positions],
            self.resolution,
            fit=self.fit,
            max_pixels=self.max_pixels,
            skip_bad=self.skip_bad,
            random_fit=train and self.fit == "random_crop",
        )
        return (StreamTrainLoader if train else StreamLoader)(
            dataset,
            batch_size=batch,
            shuffle=train,
            num_workers=self.num_workers,
            collate_fn=collate_skipping,
            pin_memory=pin,
            persistent_workers=self.num_workers > 0,
            drop_last=drop_last,
        )

    def train_dataloader(self) -> Iterable:
        return self._loader("train", train=True)

    def val_dataloader(self) -> Iterable:
        return self._loader("val", train=False)

    def test_dataloader(self) -> Iterable:
        return self._loader("test", train=False)

    def dedup_test_dataloader(self, first: int | None = None) -> Iterable:
        """The test images without a byte-identical copy in train or val, in test order, among the `first` test
        images only when given (those a test cut short by limit_test_batches saw); never split across processes."""
        if self.test_duplicates is None:
            raise RuntimeError("the test duplicates are marked by setup(), which has not run")
        keep = ~self.test_duplicates
        if first is not None:
            keep[first:] = False
        return self._loader("test", train=False, keep=keep)


def _check_arguments(args: dict) -> None:
    """Every data.<key> a run depends on, checked before anything is read: a bad value ends in one line."""
    classes = args["classes"]
    require(
        "data.classes",
        classes,
        len(classes) == 2 and all(isinstance(c, str) and c for c in classes) and len({c.lower() for c in classes}) == 2,
        "two distinct class folder names, e.g. [REAL, FAKE]",
    )

    def positive(v: object) -> bool:
        return is_int(v) and v > 0

    def limit(v: object) -> bool:
        return v is None or (is_int(v) and v >= len(classes))

    def names(v: object) -> bool:
        return (
            not isinstance(v, (str, bytes, Mapping))
            and isinstance(v, Iterable)
            and all(isinstance(s, str) and s for s in v)
        )

    checks = [
        ("resolution", lambda v: is_int(v) and v >= MIN_RESOLUTION, f"an integer >= {MIN_RESOLUTION} (pixels a side)"),
        ("channels", lambda v: is_int(v) and v in (1, 3), "1 (greyscale) or 3 (RGB)"),
        (
            "val_fraction",
            lambda v: is_number(v) and 0 <= v < 1,
            "in [0, 1): the share of train images held out for validation (0: no validation)",
        ),
        (
            "test_fraction",
            lambda v: is_number(v) and 0 < v <= 1,
            "in (0, 1]: the share carved as test when the source has no test split (1: all of it, to evaluate it "
            "whole)",
        ),
        ("batch_size", positive, "a positive integer"),
        ("eval_batch_size", positive, "a positive integer"),
        ("stats_sample", positive, "a positive integer"),
        ("loader", lambda v: v in LOADERS, " | ".join(LOADERS)),
        ("fit", lambda v: v in FITS, " | ".join(FITS)),
        ("num_workers", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
        ("train_limit", limit, f"null (every image) or an integer >= {len(classes)} (images in the split)"),
        ("test_limit", limit, f"null (every image) or an integer >= {len(classes)} (images in the split)"),
        ("decode_workers", lambda v: v is None or positive(v), "null (every core) or a positive integer"),
        ("max_pixels", lambda v: v is None or positive(v), "null (no limit) or a positive integer"),
        ("seed", is_int, "an integer"),
        (
            "aliases",
            lambda v: (
                v is None or (isinstance(v, Mapping) and all(isinstance(k, str) and names(a) for k, a in v.items()))
            ),
            "null (the default folder names) or a map from class to a list of folder names, e.g. "
            "{FAKE: [fake, ai, 1_fake]}",
        ),
        ("layout", lambda v: v in LAYOUTS, " | ".join(LAYOUTS)),
        ("manifest", lambda v: v is None or (isinstance(v, str) and v != ""), "null or the path of a CSV manifest"),
        (
            "train_sources",
            lambda v: v is None or (names(v) and len(list(v)) > 0),
            "null (every source) or a non-empty list of source names, e.g. [REAL, sdv14]",
        ),
        (
            "litdata_dir",
            lambda v: v is None or (isinstance(v, str) and v != ""),
            "null or the folder (or object storage URL) that python -m fakedetect.pack wrote",
        ),
    ]
    require_each("data", args, checks)
    require(
        "data.litdata_dir",
        args["litdata_dir"],
        args["loader"] != "litdata" or args["litdata_dir"],
        "set with data.loader=litdata: the output folder of python -m fakedetect.pack",
    )


def _resolved(root: str) -> str:
    return str(Path(root).expanduser().resolve())


def _write_atomic(path: Path, text: str) -> None:
    """Write a small file whole or not at all (a temporary file beside it, renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
