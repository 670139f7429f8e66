"""Files decoded one per item in DataLoader workers, a bad file reported by name rather than a crash mid-epoch:
the stream loader's batches."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from fakedetect.data.batch import Batch
from fakedetect.data.decode import DEFAULT_MAX_PIXELS, BadImageError, Fit, decode_image
from fakedetect.data.layouts import DataLayoutError, Entry
from fakedetect.data.sources import Source

log = logging.getLogger(__name__)

Item = tuple[Tensor, int, int, bool]


class Unreadable(NamedTuple):
    """A file a worker could not decode: handed to the main process, which counts it or stops on it."""

    name: str
    label: int
    reason: str


class StreamDataset(Dataset):
    """Decodes one file per item, in DataLoader workers; a bad file comes back as `Unreadable`. An item is the
    image with its label, source index and duplicate mark (`duplicates`; None: none marked).

    With `random_fit` (training with fit=random_crop) each item draws its crop from torch's generator, which
    Lightning seeds and DataLoader seeds per worker and epoch: crops differ between epochs, reproducibly.
    """

    def __init__(
        self,
        source: Source,
        entries: list[Entry],
        sources: np.ndarray,
        resolution: int,
        fit: str = Fit.SQUASH,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        skip_bad: bool = True,
        random_fit: bool = False,
        duplicates: np.ndarray | None = None,
    ) -> None:
        self.source, self.entries, self.sources, self.resolution = source, entries, sources, resolution
        self.fit, self.max_pixels, self.skip_bad, self.random_fit = fit, max_pixels, skip_bad, random_fit
        self.duplicates = duplicates if duplicates is not None else np.zeros(len(entries), dtype=bool)
        self.skipped: list[str] = []  # filled by SkippingLoader in the main process, across all workers

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int | Tensor) -> Item | Unreadable:
        i = int(i)  # a position from EpochOrder's batch, a 0-d tensor
        entry = self.entries[i]
        rng = random.Random(int(torch.randint(2**62, (1,)))) if self.random_fit else None
        try:
            image = decode_image(
                self.source.read_one(entry.name), self.resolution, fit=self.fit, max_pixels=self.max_pixels, rng=rng
            )
        except Exception as err:  # noqa: BLE001 - a bad file is skipped or reported by name, never a crash mid-epoch
            return Unreadable(entry.name, entry.label, f"{type(err).__name__}: {err}")
        # decode_image's array is a read-only view of Pillow's buffer: one writable copy, as torch wants
        image_chw = torch.from_numpy(np.require(image, requirements="W")).permute(2, 0, 1)
        return image_chw, entry.label, int(self.sources[i]), bool(self.duplicates[i])


def collate_skipping(items: list[Item | Unreadable]) -> tuple[Batch, list[Unreadable]]:
    """The readable items as one batch (possibly empty), and the unreadable ones beside it."""
    good = [item for item in items if not isinstance(item, Unreadable)]
    bad = [item for item in items if isinstance(item, Unreadable)]
    if not good:
        empty = torch.empty(0, dtype=torch.int64)
        return Batch(torch.empty(0, dtype=torch.uint8), empty, empty, empty.bool()), bad
    return Batch(*default_collate(good)), bad


class SkippingLoader(DataLoader):
    """A DataLoader over a StreamDataset that yields `Batch`es and never an empty one.

    Unreadable files are logged and counted here, in the main process (or, with skip_bad false, stop the run with
    a BadImageError naming the file: raised in a worker it would arrive wrapped in a traceback). A batch of only
    unreadable files is left out, or, from `SkippingTrainLoader`, is None.
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
        for batch, bad in super().__iter__():
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
            seen.update(batch.labels.tolist())
            if len(batch.labels):
                yield batch
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


class SkippingTrainLoader(SkippingLoader):
    keeps_batch_count = True
