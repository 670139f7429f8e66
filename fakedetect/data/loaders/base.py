"""What a loader is: one way images reach the model, registered by the name `data.loader` gives it.

A loader plans the run's splits from what it reads (a decoded cache, the listing, packed chunks), takes the train
split's normalization statistics and yields every split as `Batch`es of uint8 images with labels, sources and
test duplicate marks. Adding one is a class with `@register("name")` in a module of this package.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeVar

import numpy as np
import torch

from fakedetect.data.batch import Batch
from fakedetect.data.layouts import Entry
from fakedetect.data.loaders.order import EpochOrder
from fakedetect.data.sources import Source
from fakedetect.data.splits import Plan, Split, stratified_sample
from fakedetect.data.statistics import Statistics
from fakedetect.utils.errors import ConfigError

if TYPE_CHECKING:
    from fakedetect.data.config import DataConfig

log = logging.getLogger(__name__)

LOADERS: dict[str, type[Loader]] = {}
LoaderClass = TypeVar("LoaderClass", bound="type[Loader]")


def register(name: str) -> Callable[[LoaderClass], LoaderClass]:
    """Make a Loader class the one `data.loader=<name>` builds."""

    def add(cls: LoaderClass) -> LoaderClass:
        cls.name = name
        LOADERS[name] = cls
        return cls

    return add


@dataclass(frozen=True)
class Where:
    """The process batches are for: its device (pinned host memory for CUDA) and its share of a DDP run."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def pin(self) -> bool:
        return self.device.type == "cuda"


class Loader(ABC):
    """One kind of loader; `timings` records how long its reading took (decode, cache load, hashing)."""

    name: ClassVar[str]

    def __init__(self, config: DataConfig) -> None:
        self.config = config
        self.timings: dict[str, float] = {}

    def prepare(self) -> None:  # noqa: B027 - a hook: only the loaders that decode into a cache need it
        """Work done once per machine before any process plans (decoding into the shared cache); none by default."""

    @abstractmethod
    def plan(self) -> Plan:
        """The run's splits, from what this loader reads."""

    @abstractmethod
    def statistics(self, plan: Plan) -> Statistics:
        """The train split's per-channel mean and std."""

    @abstractmethod
    def batches(self, plan: Plan, split: str, train: bool, where: Where) -> Iterable[Batch | None]:
        """A split's batches for one process: shuffled anew each epoch when `train`, else in split order."""

    def images(self, part: Split) -> np.ndarray:
        """A split's decoded images (N, H, W, 3) in split order, read into RAM: for small data and tests."""
        raise ConfigError(f"a split's images in memory need data.loader=memory or cached, not {self.name}")

    def batch_size(self, train: bool) -> int:
        return self.config.batch_size if train else self.config.eval_batch_size

    def drop_last(self, n: int, train: bool, where: Where) -> bool:
        """Training drops a last partial batch (every rank runs the same steps) unless the split is that small."""
        return train and n >= self.config.batch_size * where.world_size

    def order(self, part: Split, train: bool, where: Where) -> EpochOrder:
        """The batches of positions in `part` this process draws: its own share of the split, no position twice
        across processes (Lightning's DistributedSampler would pad the last shares with repeats, counted twice in
        the test figures; the trainer is built with `use_distributed_sampler=False`)."""
        return EpochOrder(
            len(part),
            self.batch_size(train),
            shuffle=train,
            seed=self.config.seed,
            rank=where.rank,
            world_size=where.world_size,
            drop_last=self.drop_last(len(part), train, where),
        )


def listing(config: DataConfig, source: Source) -> list[Entry]:
    """The source's images as the config lists them, sampled by data.train_limit and data.test_limit."""
    listed = source.list(config.classes, aliases=config.aliases, layout=config.layout, manifest=config.manifest)
    if listed.ignored:
        log.info(
            "ignored %d non-image or unplaced files in %s, e.g. %s", len(listed.ignored), config.root, listed.ignored[0]
        )
    if listed.not_regular:
        log.warning(
            "skipped %d entries of %s that are not regular files (FIFOs, devices, sockets, broken links, an "
            "archive's links), e.g. %s",
            len(listed.not_regular),
            config.root,
            listed.not_regular[0],
        )
    by_split: dict[str, list[Entry]] = {}
    for e in listed.entries:
        by_split.setdefault(e.split, []).append(e)
    limits = {"train": config.train_limit, "": config.train_limit, "val": config.test_limit, "test": config.test_limit}
    return [e for s, es in by_split.items() for e in stratified_sample(es, limits[s], config.seed)]
