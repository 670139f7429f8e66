"""The two ways batches reach the model, both yielding (uint8 images NCHW, int64 labels).

`DeviceBatches` keeps a whole split on the training device and slices shuffled batches from it (no
workers, no per-sample Python); `StreamDataset` decodes files in DataLoader workers for datasets too
large or too high-resolution to hold.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from fakedetect.data.decode import decode_image
from fakedetect.data.sources import Entry, Source

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


class StreamDataset(Dataset):
    """Decodes one file per item; an unreadable file is logged, counted and dropped by `collate_skipping`."""

    def __init__(self, source: Source, entries: list[Entry], resolution: int) -> None:
        self.source, self.entries, self.resolution = source, entries, resolution
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[Tensor, int] | None:
        entry = self.entries[i]
        try:
            image = decode_image(self.source.read_one(entry.name), self.resolution)
        except Exception as err:  # noqa: BLE001 - a bad file is skipped, never a crash mid-epoch
            self.skipped += 1
            log.warning(
                "skipping unreadable image %s/%s (%d skipped in this worker): %s",
                self.source.path, entry.name, self.skipped, err,
            )
            return None
        return torch.from_numpy(image).permute(2, 0, 1), entry.label


def collate_skipping(items: list[tuple[Tensor, int] | None]) -> tuple[Tensor, Tensor]:
    return default_collate([item for item in items if item is not None])
