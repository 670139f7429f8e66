"""`data.loader=cached`: batches read from the memory-mapped decode cache by DataLoader workers, so a cache larger
than RAM still trains; the same order as the memory loader for a seed."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from fakedetect.data.batch import Batch
from fakedetect.data.loaders.base import Where, register
from fakedetect.data.loaders.decoded import DecodedLoader
from fakedetect.data.splits import Plan, Split


class CacheRows(Dataset):
    """A split of the memory-mapped decode cache, fetched a whole batch at a time.

    Workers reopen the cache file by name (a pickled memmap would arrive as a full copy); a batch's rows are read
    in file order, for locality on disk, and handed out in the batch's order.
    """

    def __init__(self, images: np.ndarray, part: Split) -> None:
        if not isinstance(images, np.memmap) or images.filename is None:
            raise TypeError("CacheRows reads a memory-mapped decode cache (load_cache's images)")
        self.path, self.part = images.filename, part
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.part)

    def __getitem__(self, positions: Tensor) -> Batch:
        if self._images is None:
            self._images = np.load(self.path, mmap_mode="r")
        at = positions.numpy()
        rows = self.part.index[at]
        in_file_order = np.argsort(rows, kind="stable")
        images = np.empty((len(rows), *self._images.shape[1:]), dtype=np.uint8)
        images[in_file_order] = self._images[rows[in_file_order]]
        part = self.part
        return Batch(
            torch.from_numpy(images).permute(0, 3, 1, 2),
            *(torch.from_numpy(m[at]) for m in (part.labels, part.sources, part.duplicates)),
        )

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}


@register("cached")
class CachedLoader(DecodedLoader):
    """Each batch's rows read from the memory-mapped cache by workers, in the memory loader's order."""

    def batches(self, plan: Plan, split: str, train: bool, where: Where) -> DataLoader:
        part = plan.splits[split]
        workers = self.config.num_workers
        return DataLoader(
            CacheRows(self.decoded_images, part),
            sampler=self.order(part, train, where),
            batch_size=None,
            num_workers=workers,
            pin_memory=where.pin,
            persistent_workers=workers > 0,
        )
