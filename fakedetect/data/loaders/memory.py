"""`data.loader=memory`: each split held on the training device as uint8, batches sliced from it (no workers, no
per-sample Python); the fastest, for splits that fit the device."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from fakedetect.data.batch import Batch
from fakedetect.data.loaders.base import Where, register
from fakedetect.data.loaders.decoded import DecodedLoader
from fakedetect.data.loaders.order import EpochOrder
from fakedetect.data.splits import Plan, Split

if TYPE_CHECKING:
    from fakedetect.data.config import DataConfig

# rows moved to the device at a time: the memory loader never copies a whole split into RAM first
DEVICE_CHUNK = 8192


class DeviceBatches:
    """An iterable of batches over a split's tensors already on the device."""

    def __init__(self, split: Batch, order: EpochOrder) -> None:
        self.split, self.order = split, order

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[Batch]:
        batches = list(self.order)
        if not batches:
            return
        # the epoch's order moved to the device once, not a small copy per step
        for idx in torch.cat(batches).to(self.split.images.device).split([len(b) for b in batches]):
            yield Batch(*(t[idx] for t in self.split))


@register("memory")
class MemoryLoader(DecodedLoader):
    """Each split copied to the device once (per device), then sliced into batches there."""

    def __init__(self, config: DataConfig) -> None:
        super().__init__(config)
        self._on_device: dict[tuple[str, str], Batch] = {}

    def _held(self, split: str, part: Split, device: torch.device) -> Batch:
        """A split's images, labels, sources and duplicate marks on the device, copied in chunks from the cache."""
        held = self._on_device
        if (split, str(device)) not in held:
            rows = self.decoded_images
            images = torch.empty((len(part), 3, *rows.shape[1:3]), dtype=torch.uint8, device=device)
            for i in range(0, len(part), DEVICE_CHUNK):
                chunk = np.ascontiguousarray(rows[part.index[i : i + DEVICE_CHUNK]])
                images[i : i + len(chunk)] = torch.from_numpy(chunk).to(device).permute(0, 3, 1, 2)
            marks = (part.labels, part.sources, part.duplicates)
            held[(split, str(device))] = Batch(images, *(torch.from_numpy(m).to(device) for m in marks))
        return held[(split, str(device))]

    def batches(self, plan: Plan, split: str, train: bool, where: Where) -> DeviceBatches:
        part = plan.splits[split]
        return DeviceBatches(self._held(split, part, where.device), self.order(part, train, where))
