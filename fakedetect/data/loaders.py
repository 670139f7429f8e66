"""Every way batches reach the model, all yielding (uint8 images NCHW, int64 labels, int64 sources).

- `memory`: `DeviceBatches` slices shuffled batches from a whole split held on the training device (no workers,
  no per-sample Python); the fastest, for splits that fit the device.
- `cached`: `CachedBatches` reads each batch's rows from the memory-mapped decode cache in DataLoader workers,
  so a cache larger than RAM still trains.
- `stream`: `StreamDataset` decodes one file per item in DataLoader workers (no cache at all).
- `litdata`: `litdata_loader` streams the chunks `python -m fakedetect.pack` wrote, from local disk or object
  storage, each DDP rank its own share (LitData's StreamingDataset).

`memory` and `cached` draw their order from `EpochOrder`, so the two give the same batches for a seed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from fakedetect.data.decode import DEFAULT_MAX_PIXELS, BadImageError, decode_image
from fakedetect.data.layouts import DataLayoutError, Entry
from fakedetect.data.sources import Source

log = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor, Tensor]


class EpochOrder(Sampler[Tensor]):
    """Batches of positions 0..n-1: shuffled anew each epoch from `seed`, sharded across DDP ranks."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def _shard_size(self) -> int:
        n = self.n
        return n // self.world_size if self.drop_last else -(-(n - self.rank) // self.world_size)

    def __len__(self) -> int:
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.n)
        self.epoch += 1
        order = order[self.rank :: self.world_size][: self._shard_size()]
        for b in range(len(self)):
            yield order[b * self.batch_size : (b + 1) * self.batch_size]


class DeviceBatches:
    """An iterable of batches over tensors already on the device."""

    def __init__(self, images: Tensor, labels: Tensor, sources: Tensor, order: EpochOrder) -> None:
        self.images, self.labels, self.sources, self.order = images, labels, sources, order

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[Batch]:
        batches = list(self.order)
        if not batches:
            return
        # the epoch's order moved to the device once, not a small copy per step
        for idx in torch.cat(batches).to(self.images.device).split([len(b) for b in batches]):
            yield self.images[idx], self.labels[idx], self.sources[idx]


class CacheRows(Dataset):
    """A split of the memory-mapped decode cache, fetched a whole batch at a time.

    Workers reopen the cache file by name (a pickled memmap would arrive as a full copy); a batch's rows are read
    in file order, for locality on disk, and handed out in the batch's order.
    """

    def __init__(self, images: np.ndarray, index: np.ndarray, labels: np.ndarray, sources: np.ndarray) -> None:
        if not isinstance(images, np.memmap) or images.filename is None:
            raise TypeError("CacheRows reads a memory-mapped decode cache (load_cache's images)")
        self.path, self.index, self.labels, self.sources = images.filename, index, labels, sources
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, positions: Tensor) -> Batch:
        if self._images is None:
            self._images = np.load(self.path, mmap_mode="r")
        at = positions.numpy()
        rows = self.index[at]
        in_file_order = np.argsort(rows, kind="stable")
        images = np.empty((len(rows), *self._images.shape[1:]), dtype=np.uint8)
        images[in_file_order] = self._images[rows[in_file_order]]
        return (
            torch.from_numpy(images).permute(0, 3, 1, 2),
            torch.from_numpy(self.labels[at]),
            torch.from_numpy(self.sources[at]),
        )

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}


class CachedBatches:
    """Batches read from the memory-mapped cache by DataLoader workers; the split is never held in RAM."""

    def __init__(self, rows: CacheRows, order: EpochOrder, num_workers: int, pin_memory: bool) -> None:
        self.order = order
        self.loader = DataLoader(
            rows,
            sampler=order,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,
        )

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.loader)


class Unreadable(NamedTuple):
    """A file a worker could not decode: handed to the main process, which counts it or stops on it."""

    name: str
    label: int
    reason: str


class StreamDataset(Dataset):
    """Decodes one file per item, in DataLoader workers; a bad file comes back as `Unreadable`.

    With `random_fit` (training with fit=random_crop) each item draws its crop from torch's generator, which
    Lightning seeds and DataLoader seeds per worker and epoch: crops differ between epochs, reproducibly.
    """

    def __init__(
        self,
        source: Source,
        entries: list[Entry],
        sources: np.ndarray,
        resolution: int,
        fit: str = "squash",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        skip_bad: bool = True,
        random_fit: bool = False,
    ) -> None:
        self.source, self.entries, self.sources, self.resolution = source, entries, sources, resolution
        self.fit, self.max_pixels, self.skip_bad, self.random_fit = fit, max_pixels, skip_bad, random_fit
        self.skipped: list[str] = []  # filled by StreamLoader in the main process, across all workers

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int] | Unreadable:
        entry = self.entries[i]
        rng = random.Random(int(torch.randint(2**62, (1,)))) if self.random_fit else None
        try:
            image = decode_image(
                self.source.read_one(entry.name), self.resolution, fit=self.fit, max_pixels=self.max_pixels, rng=rng
            )
        except Exception as err:  # noqa: BLE001 - a bad file is skipped or reported by name, never a crash mid-epoch
            return Unreadable(entry.name, entry.label, f"{type(err).__name__}: {err}")
        # decode_image's array is a read-only view of Pillow's buffer: one writable copy, as torch wants
        return torch.from_numpy(np.require(image, requirements="W")).permute(2, 0, 1), entry.label, int(self.sources[i])


def collate_skipping(
    items: list[tuple[Tensor, int, int] | Unreadable],
) -> tuple[Tensor, Tensor, Tensor, list[Unreadable]]:
    """The readable items as one batch (possibly empty), and the unreadable ones beside it."""
    good = [item for item in items if not isinstance(item, Unreadable)]
    bad = [item for item in items if isinstance(item, Unreadable)]
    if not good:
        empty = torch.empty(0, dtype=torch.int64)
        return torch.empty(0, dtype=torch.uint8), empty, empty, bad
    images, labels, sources = default_collate(good)
    return images, labels, sources, bad


class StreamLoader(DataLoader):
    """A DataLoader over a StreamDataset that yields (images, labels, sources) and never an empty batch.

    Unreadable files are logged and counted here, in the main process (or, with skip_bad false, stop the run with
    a BadImageError naming the file: raised in a worker it would arrive wrapped in a traceback). A batch of only
    unreadable files is left out, or, from `StreamTrainLoader`, is None.
    """

    # None in place of an all-unreadable batch: Lightning skips a None training batch, and the epoch keeps the
    # length it announced, by which Lightning decides when to validate
    keeps_batch_count = False
    dataset: StreamDataset

    # a generator of batches where DataLoader's stub promises its _BaseDataLoaderIter
    def __iter__(self) -> Iterator[Batch | None]:  # type: ignore[override]
        dataset = self.dataset
        seen: set[int] = set()
        unreadable: dict[int, list[str]] = {}
        for images, labels, sources, bad in super().__iter__():
            for item in bad:
                if not dataset.skip_bad:
                    raise BadImageError(
                        f"cannot decode {dataset.source.path}/{item.name}: {item.reason} "
                        "(data.skip_bad=true skips and counts such files)"
                    )
                dataset.skipped.append(item.name)
                unreadable.setdefault(item.label, []).append(item.name)
                log.warning(
                    "skipping unreadable image %s/%s (%d skipped): %s",
                    dataset.source.path,
                    item.name,
                    len(dataset.skipped),
                    item.reason,
                )
            seen.update(labels.tolist())
            if len(labels):
                yield images, labels, sources
                continue
            log.warning("skipping a batch whose %d images are all unreadable", len(bad))
            if self.keeps_batch_count:
                yield None
        # A whole pass (not one cut short by limit_*_batches) in which a class was only ever unreadable: its
        # metrics would describe the other class alone.
        for label in sorted(set(unreadable) - seen):
            names = unreadable[label]
            raise DataLayoutError(
                f"{dataset.source.path}: every image of class {label} read from "
                f"'{PurePosixPath(names[0]).parent}' in this split is unreadable ({len(names)} "
                f"files, e.g. {names[0]}); replace them, or list them with "
                "python -m fakedetect.audit"
            )


class StreamTrainLoader(StreamLoader):
    keeps_batch_count = True


def _litdata_batch(items: list[dict]) -> Batch:
    return (
        torch.stack([torch.as_tensor(item["image"]) for item in items]).permute(0, 3, 1, 2),
        torch.tensor([item["label"] for item in items], dtype=torch.int64),
        torch.tensor([item["source"] for item in items], dtype=torch.int64),
    )


class KeptBatches:
    """Another loader's batches with only the items whose position in the split is kept (positions counted in
    the order that loader yields, which for an unshuffled split is the split's order)."""

    def __init__(self, loader: Iterable[Batch], keep: np.ndarray) -> None:
        self.loader, self.keep = loader, torch.from_numpy(keep)

    def __iter__(self) -> Iterator[Batch]:
        start = 0
        for images, labels, sources in self.loader:
            mask = self.keep[start : start + len(labels)].to(labels.device)
            start += len(labels)
            if mask.any():
                yield images[mask], labels[mask], sources[mask]


def litdata_loader(
    input_dir: str, batch_size: int, shuffle: bool, seed: int, num_workers: int, drop_last: bool, pin_memory: bool
) -> DataLoader:
    """LitData's loader over one split's chunks; it shards the items across DDP ranks and workers itself."""
    from litdata import StreamingDataLoader, StreamingDataset

    dataset = StreamingDataset(input_dir, shuffle=shuffle, seed=seed, drop_last=drop_last)
    return StreamingDataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_litdata_batch,
        pin_memory=pin_memory,
        drop_last=drop_last,
    )
