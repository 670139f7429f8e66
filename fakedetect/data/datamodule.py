"""One LightningDataModule for every model and dataset; it coordinates and decides little itself.

The settings are `config.py`'s DataConfig (checked once; `dm.resolution` and the like read it); the loader
`data.loader` names (`loaders/`) plans the splits (`splits.py`) from what it reads, takes the train statistics
(`statistics.py`) and yields the batches. Decoding lives in `decode.py` and `cache.py`, listing in `layouts.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from typing import Any, Protocol, cast, runtime_checkable

import lightning as L
import numpy as np
import torch
from torch import Tensor

from fakedetect.data.augment import BatchAugment
from fakedetect.data.batch import Batch
from fakedetect.data.cache import Decoded
from fakedetect.data.config import DataConfig
from fakedetect.data.loaders import LOADERS, Where
from fakedetect.data.loaders.decoded import decoded
from fakedetect.data.splits import Plan, Split
from fakedetect.data.statistics import Statistics
from fakedetect.utils.errors import ConfigError

log = logging.getLogger(__name__)

SETTINGS = frozenset(f.name for f in fields(DataConfig))
# every key of the `data` config group: the settings and the training augmentation
DATA_KEYS = SETTINGS | {"augment"}


@runtime_checkable
class TakesStatistics(Protocol):
    """A LightningModule that keeps the normalization statistics as buffers (Detector)."""

    has_statistics: bool

    def set_statistics(self, mean: Sequence[float], std: Sequence[float]) -> None: ...


class ImageDataModule(L.LightningDataModule):
    """Binary real/fake images with FAKE = 1 the positive class (the order of `classes`).

    Every loader yields `Batch`es of uint8 NCHW images with labels, source indices (into `source_names`) and
    duplicate marks (a test image byte-identical to a train or val file), so one test pass scores the overall,
    per-source and deduplicated figures. `on_after_batch_transfer` augments training batches on the device; the
    detector preprocesses every batch itself.
    """

    def __init__(self, root: str, augment: BatchAugment | None = None, **settings: Any) -> None:
        super().__init__()
        self.config = DataConfig.of(root, settings)
        self.augment = augment or BatchAugment()
        self.loader = LOADERS[self.config.loader](self.config)
        self.timings = self.loader.timings
        self._plan: Plan | None = None
        self._statistics: Statistics | None = None
        # degrades every uint8 test batch before the detector sees it (a robustness row); None: clean
        self.test_transform: Callable[[Tensor], Tensor] | None = None

    def __getattr__(self, name: str) -> Any:
        """A data setting (`dm.resolution`, `dm.classes`, ...) is the config's: it has one owner."""
        if name in SETTINGS and "config" in self.__dict__:
            return getattr(self.__dict__["config"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def plan(self) -> Plan:
        if self._plan is None:
            raise RuntimeError("the splits are planned by setup(), which has not run")
        return self._plan

    @property
    def splits(self) -> dict[str, Split]:
        return self.plan.splits

    @property
    def split_sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.plan.splits.items()}

    @property
    def source_names(self) -> list[str]:
        return self.plan.source_names

    @property
    def test_names(self) -> list[str]:
        return self.plan.test_names

    @property
    def duplicate_groups(self) -> int:
        return self.plan.duplicate_groups

    @property
    def skipped(self) -> list[str]:
        return self.plan.skipped

    def decoded(self) -> Decoded:
        """The decoded images, memory-mapped from the cache; decoded on every core and cached first if need be."""
        return decoded(self.config, self.timings)

    def split_images(self, split: str) -> np.ndarray:
        """A split's decoded images (N, H, W, 3) in split order, read into RAM: for small data and tests."""
        return self.loader.images(self.plan.splits[split])

    def prepare_data(self) -> None:
        self.loader.prepare()

    def setup(self, stage: str | None = None) -> None:
        """Plans the splits once; a detector without normalization statistics (one fitted from scratch) gets the
        train split's, a checkpoint's keeps its own."""
        if self._plan is None:
            self._plan = self.loader.plan()
            log.info("splits: %s; sources %s", self.split_sizes, self.source_names)
        model = self.trainer.lightning_module if self.trainer is not None else None
        if isinstance(model, TakesStatistics) and not model.has_statistics:
            model.set_statistics(*self.statistics())

    def statistics(self) -> Statistics:
        """The train split's per-channel mean and std, taken (or read from their cache) when first asked for."""
        if self._statistics is None:
            self._statistics = self.loader.statistics(self.plan)
        return self._statistics

    @property
    def mean(self) -> list[float]:
        return self.statistics()[0]

    @property
    def std(self) -> list[float]:
        return self.statistics()[1]

    def on_after_batch_transfer(self, batch: Batch | None, dataloader_idx: int) -> Batch | None:
        """The batch on the training device, training's augmented (floats in [0, 1]), a robustness pass's degraded
        by `test_transform`; the detector preprocesses it."""
        if batch is None:  # a streamed training batch of only unreadable files, which Lightning skips
            return None
        if self.trainer is not None and self.trainer.training:
            return batch._replace(images=self.augmented(batch.images))
        if self.test_transform is not None and self.trainer is not None and self.trainer.testing:
            return batch._replace(images=self.test_transform(batch.images))
        return batch

    def augmented(self, images: Tensor) -> Tensor:
        """Training's view of a uint8 batch: floats in [0, 1], augmented where the batch is (on the device)."""
        return self.augment(images.float().div_(255))

    def _where(self) -> Where:
        if self.trainer is None:
            return Where(torch.device("cpu"))
        return Where(self.trainer.strategy.root_device, self.trainer.global_rank, self.trainer.world_size)

    def _batches(self, split: str, train: bool) -> Iterable[Batch | None]:
        where = self._where()
        n = len(self.plan.splits[split])
        if 0 < n < where.world_size:  # a process without a batch would wait for the others for ever
            raise ConfigError(
                f"{self.config.root}: the {split} split holds {n} images, fewer than the run's {where.world_size} "
                "processes, each of which needs one; use fewer trainer.devices"
            )
        return self.loader.batches(self.plan, split, train, where)

    def train_dataloader(self) -> Iterable[Batch | None]:
        return self._batches("train", train=True)

    # only a training epoch stands a None in for a batch of unreadable files; evaluation leaves it out
    def val_dataloader(self) -> Iterable[Batch]:
        return cast(Iterable[Batch], self._batches("val", train=False))

    def test_dataloader(self) -> Iterable[Batch]:
        return cast(Iterable[Batch], self._batches("test", train=False))
