"""The two ways batches reach the model, both yielding (uint8 images NCHW, int64 labels).

`DeviceBatches` keeps a whole split on the training device and slices shuffled batches from it (no
workers, no per-sample Python); `StreamDataset` decodes files in DataLoader workers for datasets too
large or too high-resolution to hold.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from fakedetect.data.decode import DEFAULT_MAX_PIXELS, BadImageError, decode_image
from fakedetect.data.sources import DataLayoutError, Entry, Source

log = logging.getLogger(__name__)


class DeviceBatches:
    """An iterable of batches over tensors already on the device; shards the order across DDP ranks."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def _shard_size(self) -> int:
        n = len(self.labels)
        return n // self.world_size if self.drop_last else -(-(n - self.rank) // self.world_size)

    def __len__(self) -> int:
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=gen).to(self.images.device)
        else:
            order = torch.arange(n, device=self.images.device)
        self.epoch += 1
        order = order[self.rank :: self.world_size][: self._shard_size()]
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.images[idx], self.labels[idx]


class Unreadable(NamedTuple):
    """A file a worker could not decode: handed to the main process, which counts it or stops on it."""

    name: str
    label: int
    reason: str


class StreamDataset(Dataset):
    """Decodes one file per item, in DataLoader workers; a bad file comes back as `Unreadable`."""

    def __init__(self, source: Source, entries: list[Entry], resolution: int,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, skip_bad: bool = True) -> None:
        self.source, self.entries, self.resolution = source, entries, resolution
        self.max_pixels, self.skip_bad = max_pixels, skip_bad
        self.skipped: list[str] = []  # filled by StreamLoader in the main process, across all workers

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[Tensor, int] | Unreadable:
        entry = self.entries[i]
        try:
            image = decode_image(self.source.read_one(entry.name), self.resolution, self.max_pixels)
        except Exception as err:  # noqa: BLE001 - a bad file is skipped or reported by name, never a crash mid-epoch
            return Unreadable(entry.name, entry.label, f"{type(err).__name__}: {err}")
        return torch.from_numpy(image).permute(2, 0, 1), entry.label


def collate_skipping(items: list[tuple[Tensor, int] | Unreadable]) -> tuple[Tensor, Tensor, list[Unreadable]]:
    """The readable items as one batch (possibly empty), and the unreadable ones beside it."""
    good = [item for item in items if not isinstance(item, Unreadable)]
    bad = [item for item in items if isinstance(item, Unreadable)]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), bad
    images, labels = default_collate(good)
    return images, labels, bad


class StreamLoader(DataLoader):
    """A DataLoader over a StreamDataset that yields (images, labels) and never an empty batch.

    Unreadable files are logged and counted here, in the main process (or, with skip_bad false, stop the run with
    a BadImageError naming the file: raised in a worker it would arrive wrapped in a traceback). A batch of only
    unreadable files is left out, or, from `StreamTrainLoader`, is None.
    """

    # None in place of an all-unreadable batch: Lightning skips a None training batch, and the epoch keeps the
    # length it announced, by which Lightning decides when to validate
    keeps_batch_count = False

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor] | None]:
        dataset: StreamDataset = self.dataset
        seen: set[int] = set()
        unreadable: dict[int, list[str]] = {}
        for images, labels, bad in super().__iter__():
            for item in bad:
                if not dataset.skip_bad:
                    raise BadImageError(f"cannot decode {dataset.source.path}/{item.name}: {item.reason} "
                                        "(data.skip_bad=true skips and counts such files)")
                dataset.skipped.append(item.name)
                unreadable.setdefault(item.label, []).append(item.name)
                log.warning("skipping unreadable image %s/%s (%d skipped): %s",
                            dataset.source.path, item.name, len(dataset.skipped), item.reason)
            seen.update(labels.tolist())
            if len(labels):
                yield images, labels
                continue
            log.warning("skipping a batch whose %d images are all unreadable", len(bad))
            if self.keeps_batch_count:
                yield None
        # A whole pass (not one cut short by limit_*_batches) in which a class was only ever unreadable: its
        # metrics would describe the other class alone.
        for label in sorted(set(unreadable) - seen):
            names = unreadable[label]
            raise DataLayoutError(f"{dataset.source.path}: every image of class {label} read from "
                                  f"'{PurePosixPath(names[0]).parent}' in this split is unreadable ({len(names)} "
                                  f"files, e.g. {names[0]}); replace them, or list them with "
                                  "python -m fakedetect.data.inspect")


class StreamTrainLoader(StreamLoader):
    keeps_batch_count = True
