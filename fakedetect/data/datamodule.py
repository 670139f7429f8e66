"""One LightningDataModule for every model: CIFAKE or any image folder, held on the device or streamed."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path, PurePosixPath

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from fakedetect.data.augment import BatchAugment
from fakedetect.data.decode import (
    DEFAULT_MAX_PIXELS,
    DIGEST,
    BadImageError,
    Decoded,
    cache_key,
    decode_entries,
    digest_entries,
    load_cache,
    save_cache,
)
from fakedetect.data.loaders import DeviceBatches, StreamDataset, StreamLoader, StreamTrainLoader, collate_skipping
from fakedetect.data.sources import DataLayoutError, Entry, Listing, Source
from fakedetect.utils.errors import ConfigError, is_int, is_number, require

log = logging.getLogger(__name__)

LUMA = (0.299, 0.587, 0.114)
# the smallest side length in pixels a run may decode to; below it no net here has anything to learn from
MIN_RESOLUTION = 8


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, carved) with `fraction` of every class carved out, reproducibly for a seed."""
    rng = np.random.default_rng(seed)
    kept, carved = [], []
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
    picked = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    )
    return [entries[i] for i in np.sort(picked)]


def channel_stats(images: np.ndarray, channels: int, chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] of (N, H, W, 3) uint8 images, in chunks to bound memory."""
    total = np.zeros(channels)
    squares = np.zeros(channels)
    count = 0
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].astype(np.float64) / 255.0
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


class ImageDataModule(L.LightningDataModule):
    """Binary real/fake images with FAKE = 1 the positive class (the order of `classes`).

    Batches are (uint8 images NCHW, int64 labels) from either loader; conversion to float,
    greyscale, augmentation and normalization happen in `preprocess` on the training device.

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
    ) -> None:
        super().__init__()
        _check_arguments(locals())
        self.root, self.classes = str(root), list(classes)
        self.resolution, self.channels = resolution, channels
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.loader, self.num_workers = loader, num_workers
        self.train_limit, self.test_limit = train_limit, test_limit
        self.cache_dir = Path(cache_dir) if cache_dir else Path("data/cache")
        self.skip_bad, self.normalize, self.stats_sample = skip_bad, normalize, stats_sample
        self.decode_workers, self.max_pixels = decode_workers, max_pixels
        self.exclude = exclude
        self.augment = augment or BatchAugment()
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        self.skipped: list[str] = []
        self.timings: dict[str, float] = {}
        self.splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.test_names: list[str] = []
        self.test_duplicates: np.ndarray | None = None
        self.duplicate_groups = 0
        self._entries: dict[str, list[Entry]] = {}
        self._on_device: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}

    def _source(self) -> Source:
        return Source.open(self.root)

    def _listing(self, source: Source) -> Listing:
        listing = source.list(self.classes)
        if listing.ignored:
            log.info("ignored %d non-image or unplaced files in %s, e.g. %s",
                     len(listing.ignored), self.root, listing.ignored[0])
        if listing.not_regular:
            log.warning("skipped %d entries of %s that are not regular files (FIFOs, devices, sockets, broken "
                        "links), e.g. %s", len(listing.not_regular), self.root, listing.not_regular[0])
        entries = listing.split("train") + listing.split("test") or listing.entries
        by_split: dict[str, list[Entry]] = {}
        for e in entries:
            by_split.setdefault(e.split, []).append(e)
        limits = {"train": self.train_limit, "test": self.test_limit, "": self.train_limit}
        picked = [e for s, es in by_split.items() for e in stratified_sample(es, limits[s], self.seed)]
        return Listing(picked, listing.ignored)

    def _cache_folder(self, source: Source) -> Path:
        key = cache_key(source.identity(), self.resolution, self.classes, self.train_limit,
                        self.test_limit, self.seed if (self.train_limit or self.test_limit) else None,
                        self.max_pixels)
        return self.cache_dir / f"{Path(self.root).name}-{self.resolution}px-{key}"

    def decoded(self) -> Decoded:
        """The decoded images, from the cache if present, else decoded on every core and cached."""
        source = self._source()
        folder = self._cache_folder(source)
        start = time.perf_counter()
        cached = load_cache(folder)
        if cached is not None:
            if cached.skipped and not self.skip_bad:
                # The cache was written by a run that skipped these files; skip_bad=false must still stop.
                raise BadImageError(f"cannot decode {source.path}/{cached.skipped[0]} "
                                    f"({len(cached.skipped)} unreadable, recorded in cache {folder})")
            self.timings["cache_load_s"] = time.perf_counter() - start
            return cached
        listing = self._listing(source)
        decoded = decode_entries(source, listing.entries, self.resolution, self.decode_workers, self.skip_bad,
                                 self.max_pixels)
        self.timings["decode_s"] = time.perf_counter() - start
        log.info("decoded %d images from %s in %.1f s (%d unreadable skipped); cache %s",
                 len(decoded.labels), self.root, self.timings["decode_s"], len(decoded.skipped), folder)
        save_cache(folder, decoded)
        return decoded

    def prepare_data(self) -> None:
        if self.loader == "memory":
            self.decoded()

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if self.loader == "memory":
            data = self.decoded()
            self.skipped = data.skipped
            labels, split_names, names, digests = data.labels, data.splits, data.names, data.digests
        else:
            source = self._source()
            source.check_streamable()
            listing = self._listing(source)
            entries = listing.entries
            labels = np.array([e.label for e in entries])
            split_names = np.array([e.split for e in entries])
            names = [e.name for e in entries]
            digests = self._stream_digests(source, entries)
        test_idx = np.flatnonzero(split_names == "test")
        train_idx = np.flatnonzero(split_names == "train")
        if not len(train_idx):
            pool = np.arange(len(labels))
            kept, carved = stratified_split(labels, self.test_fraction, self.seed)
            train_idx, test_idx = pool[kept], pool[carved]
        if self.exclude:
            if not Path(self.exclude).is_file():
                raise ConfigError(f"data.exclude: no such file {self.exclude} (a list of member names, one a line, "
                                  "e.g. the data audit's exclude_train.txt)")
            dropped = set(Path(self.exclude).read_text().split("\n"))
            before = len(train_idx)
            train_idx = np.array([i for i in train_idx if names[i] not in dropped], dtype=np.int64)
            log.info("excluded %d train files listed in %s", before - len(train_idx), self.exclude)
        kept, carved = stratified_split(labels[train_idx], self.val_fraction, self.seed)
        # A fixed shuffle, so that any prefix of val or test (limit_val_batches, say) holds both classes.
        rng = np.random.default_rng(self.seed)
        index = {"train": train_idx[kept], "val": rng.permutation(train_idx[carved]), "test": rng.permutation(test_idx)}
        self._check_classes(index, labels, has_splits=bool((split_names != "").any()))
        self.test_names = [names[i] for i in index["test"]]
        self._mark_duplicates(digests[index["test"]], digests[np.concatenate([index["train"], index["val"]])])
        if self.loader == "memory":
            self.splits = {k: (data.images[v], data.labels[v]) for k, v in index.items()}
        else:
            self._entries = {k: [entries[i] for i in v] for k, v in index.items()}
            self.splits = {k: (np.empty(0), labels[v]) for k, v in index.items()}
        if self.mean is None:
            self.mean, self.std = self._stats()
        log.info("splits: %s; mean %s std %s", {k: len(v[1]) for k, v in self.splits.items()},
                 np.round(self.mean, 4).tolist(), np.round(self.std, 4).tolist())

    def _mark_duplicates(self, test: np.ndarray, pool: np.ndarray) -> None:
        self.test_duplicates = copies_of(test, pool)
        self.duplicate_groups = len(np.unique(test[self.test_duplicates]))
        if self.duplicate_groups:
            log.info("%d test images (%d distinct files) are byte-identical to train or val images; "
                     "test/acc_dedup leaves them out", self.test_duplicates.sum(), self.duplicate_groups)

    def _stream_digests(self, source: Source, entries: list[Entry]) -> np.ndarray:
        """The files' digests for the stream loader: one pass over the source's bytes, cached beside the decode
        caches under the source's identity (which changes with any file's size or modification time)."""
        key = cache_key("digests", source.identity(), self.classes, self.train_limit, self.test_limit,
                        self.seed if (self.train_limit or self.test_limit) else None)
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
        log.info("hashed %d files of %s in %.1f s, to find test images duplicated in train", len(entries),
                 self.root, self.timings["digest_s"])
        _write_atomic(path, json.dumps({"names": names, "digests": digests.astype(str).tolist()}))
        return digests

    def _check_classes(self, index: dict[str, np.ndarray], labels: np.ndarray, has_splits: bool) -> None:
        """Every split must hold every class, after decoding, limits and exclusions: a test split of one class
        would report a perfect accuracy that means nothing."""
        for split, idx in index.items():
            if split == "val" and not self.val_fraction:
                continue
            counts = np.bincount(labels[idx], minlength=len(self.classes))
            for c in np.flatnonzero(counts == 0):
                cls = self.classes[c]
                folder = f"{'test' if split == 'test' else 'train'}/{cls}" if has_splits else cls
                bad = [n for n in self.skipped if PurePosixPath(n).parent.as_posix().lower().endswith(folder.lower())]
                if bad:
                    why = (f"its {len(bad)} files in '{folder}' are unreadable (e.g. {bad[0]}); replace them, or "
                           "list them with python -m fakedetect.data.inspect")
                elif split == "val":
                    why = (f"data.val_fraction={self.val_fraction} carves none of the '{folder}' images; raise it, "
                           "add images, or set data.val_fraction=0 to train without validation")
                else:
                    why = (f"none of the '{folder}' images is left after data.train_limit, data.test_limit and "
                           "data.exclude; add images or relax those")
                raise DataLayoutError(f"{self.root}: the {split} split has no {cls} images: {why}")

    def _stats(self) -> tuple[list[float], list[float]]:
        """Normalization statistics of the train split (never val or test), cached beside the images."""
        if not self.normalize:
            return [0.0] * self.channels, [1.0] * self.channels
        source = self._source()
        key = cache_key(source.identity(), self.resolution, self.channels, self.classes, self.val_fraction,
                        self.test_fraction, self.train_limit, self.seed, self.exclude, self.max_pixels,
                        self.stats_sample if self.loader == "stream" else None)
        path = self.cache_dir / "stats" / f"{key}.json"
        try:
            stats = json.loads(path.read_text())
            return [float(m) for m in stats["mean"]], [float(s) for s in stats["std"]]
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("ignoring the unreadable statistics cache %s (%s); computing them again", path, err)
        if self.loader == "memory":
            images = self.splits["train"][0]
        else:
            sample = stratified_sample(self._entries["train"], self.stats_sample, self.seed)
            # Unreadable files are skipped (or raise, with skip_bad=false) as everywhere else, not a crash here.
            images = decode_entries(source, sample, self.resolution, self.decode_workers, self.skip_bad,
                                    self.max_pixels).images
            if not len(images):
                raise DataLayoutError(f"{self.root}: none of the {len(sample)} train images sampled for the "
                                      "normalization statistics could be decoded; check them with "
                                      "python -m fakedetect.data.inspect")
        mean, std = channel_stats(images, self.channels)
        _write_atomic(path, json.dumps({"mean": mean, "std": std}))
        return mean, std

    def state_dict(self) -> dict:
        """What eval and predict need from the data: saved in every checkpoint."""
        return {"classes": self.classes, "resolution": self.resolution, "channels": self.channels,
                "mean": self.mean, "std": self.std}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.std = state["mean"], state["std"]

    @torch.no_grad()
    def preprocess(self, images: Tensor, train: bool = False) -> Tensor:
        """uint8 NCHW batch on any device to the normalized float batch the nets take."""
        x = images.float().div_(255)
        if self.channels == 1 and x.shape[1] == 3:
            x = (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if train:
            x = self.augment(x)
        mean = x.new_tensor(self.mean).view(1, -1, 1, 1)
        std = x.new_tensor(self.std).view(1, -1, 1, 1)
        x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor] | None,
                                dataloader_idx: int) -> tuple[Tensor, Tensor] | None:
        if batch is None:  # a streamed training batch of only unreadable files, which Lightning skips
            return None
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.preprocess(images, train=training), labels

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _rank(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)

    def _loader(self, split: str, train: bool, keep: np.ndarray | None = None) -> DeviceBatches | DataLoader:
        """The split's loader for this process; with `keep` (a mask of the split), that part of it, whole."""
        batch = self.batch_size if train else self.eval_batch_size
        rank, world = self._rank() if keep is None else (0, 1)
        n = len(self.splits[split][1])
        drop_last = train and n >= batch * world
        if self.loader == "memory":
            device = self._device()
            if (split, str(device)) not in self._on_device:
                images, labels = self.splits[split]
                self._on_device[(split, str(device))] = (
                    torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device),
                    torch.from_numpy(labels).to(device),
                )
            images, labels = self._on_device[(split, str(device))]
            if keep is not None:
                index = torch.from_numpy(np.flatnonzero(keep)).to(device)
                images, labels = images[index], labels[index]
            return DeviceBatches(images, labels, batch, shuffle=train, seed=self.seed,
                                 rank=rank, world_size=world, drop_last=drop_last)
        entries = self._entries[split]
        if keep is not None:
            entries = [e for e, k in zip(entries, keep, strict=True) if k]
        dataset = StreamDataset(self._source(), entries, self.resolution, self.max_pixels, self.skip_bad)
        return (StreamTrainLoader if train else StreamLoader)(
            dataset, batch_size=batch, shuffle=train, num_workers=self.num_workers,
            collate_fn=collate_skipping, pin_memory=self._device().type == "cuda",
            persistent_workers=self.num_workers > 0, drop_last=drop_last,
        )

    def train_dataloader(self) -> DeviceBatches | DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DeviceBatches | DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DeviceBatches | DataLoader:
        return self._loader("test", train=False)

    def dedup_test_dataloader(self, first: int | None = None) -> DeviceBatches | DataLoader:
        """The test images without a byte-identical copy in train or val, in test order, among the `first` test
        images only when given (those a test cut short by limit_test_batches saw); never split across processes."""
        keep = ~self.test_duplicates
        if first is not None:
            keep[first:] = False
        return self._loader("test", train=False, keep=keep)


def _check_arguments(args: dict) -> None:
    """Every data.<key> a run depends on, checked before anything is read: a bad value ends in one line."""
    classes = args["classes"]
    require("data.classes", classes, len(classes) == 2 and all(isinstance(c, str) and c for c in classes)
            and len({c.lower() for c in classes}) == 2, "two distinct class folder names, e.g. [REAL, FAKE]")

    def positive(v: object) -> bool:
        return is_int(v) and v > 0

    def limit(v: object) -> bool:
        return v is None or (is_int(v) and v >= len(classes))

    checks = [
        ("resolution", lambda v: is_int(v) and v >= MIN_RESOLUTION, f"an integer >= {MIN_RESOLUTION} (pixels a side)"),
        ("channels", lambda v: is_int(v) and v in (1, 3), "1 (greyscale) or 3 (RGB)"),
        ("val_fraction", lambda v: is_number(v) and 0 <= v < 1,
         "in [0, 1): the share of train images held out for validation (0: no validation)"),
        ("test_fraction", lambda v: is_number(v) and 0 < v < 1,
         "in (0, 1): the share carved as test when the source has no test split"),
        ("batch_size", positive, "a positive integer"),
        ("eval_batch_size", positive, "a positive integer"),
        ("stats_sample", positive, "a positive integer"),
        ("loader", lambda v: v in ("memory", "stream"), "'memory' or 'stream'"),
        ("num_workers", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
        ("train_limit", limit, f"null (every image) or an integer >= {len(classes)} (images in the split)"),
        ("test_limit", limit, f"null (every image) or an integer >= {len(classes)} (images in the split)"),
        ("decode_workers", lambda v: v is None or positive(v), "null (every core) or a positive integer"),
        ("max_pixels", lambda v: v is None or positive(v), "null (no limit) or a positive integer"),
        ("seed", is_int, "an integer"),
    ]
    for key, ok, expected in checks:
        require(f"data.{key}", args[key], ok(args[key]), expected)


def _write_atomic(path: Path, text: str) -> None:
    """Write a small file whole or not at all (a temporary file beside it, renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
