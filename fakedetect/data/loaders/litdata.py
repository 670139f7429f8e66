"""`data.loader=litdata`: the chunks `python -m fakedetect.pack` wrote, streamed from local disk or object storage
by LitData, each DDP rank and worker its own share. The split plan and statistics are the pack's, checked against
this run's settings."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset
from litdata.streaming.sampler import ChunkedIndex

from fakedetect.data.batch import Batch
from fakedetect.data.decode import DIGEST
from fakedetect.data.layouts import SPLITS, DataLayoutError
from fakedetect.data.loaders.base import Loader, Where, register
from fakedetect.data.splits import Plan, assemble
from fakedetect.data.statistics import Statistics
from fakedetect.utils.errors import ConfigError

if TYPE_CHECKING:
    from fakedetect.data.config import DataConfig

# what pack writes beside the chunks: the planned splits, their files and the normalization statistics
PACK_META = "fakedetect_pack.json"
# the settings a pack was decoded and planned with, which a run reading it must share
PACKED_SETTINGS = ("classes", "resolution", "fit", "channels")


def _resolved(root: str) -> str:
    return str(Path(root).expanduser().resolve())


def _collate(items: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.stack([torch.as_tensor(item["image"]) for item in items]).permute(0, 3, 1, 2),
        torch.tensor([item["label"] for item in items], dtype=torch.int64),
        torch.tensor([item["source"] for item in items], dtype=torch.int64),
        torch.tensor([item["position"] for item in items], dtype=torch.int64),
    )


class Positioned(StreamingDataset):
    """Items with their position in the split (pack writes a split's items in split order), by which each image's
    duplicate mark is found whatever the shuffle, worker or rank that drew it."""

    def __getitem__(self, index: ChunkedIndex | int) -> dict[str, Any]:
        item = super().__getitem__(index)
        return {**item, "position": index.index if isinstance(index, ChunkedIndex) else index}


class Marked:
    """LitData's batches as `Batch`es, with each image's duplicate mark."""

    def __init__(self, loader: Any, duplicates: np.ndarray) -> None:
        self.loader, self.duplicates = loader, torch.from_numpy(duplicates)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for images, labels, sources, positions in self.loader:
            yield Batch(images, labels, sources, self.duplicates[positions])


@register("litdata")
class LitDataLoader(Loader):
    """The pack's splits and statistics; batches streamed from its chunks."""

    def __init__(self, config: DataConfig) -> None:
        super().__init__(config)
        self.meta: dict[str, Any] = {}

    def _packed(self, part: str) -> str:
        """A path under data.litdata_dir, which may be an object storage URL (no pathlib for it)."""
        assert self.config.litdata_dir is not None  # required with loader=litdata, checked by DataConfig
        return f"{self.config.litdata_dir.rstrip('/')}/{part}"

    def plan(self) -> Plan:
        """The splits pack planned and wrote, checked against this run's data settings."""
        config = self.config
        if config.train_sources is not None:
            raise ConfigError(
                "data.train_sources cannot filter packed data (data.loader=litdata): pack with "
                "data.train_sources set instead"
            )
        try:
            with fsspec.open(self._packed(PACK_META), "r") as f:
                self.meta = meta = json.load(f)
        except (OSError, ValueError) as err:
            raise DataLayoutError(
                f"data.litdata_dir={config.litdata_dir}: no readable {PACK_META} there ({err}); "
                "write the chunks with python -m fakedetect.pack data.root=... output=DIR"
            ) from None
        packed_from = meta["data"]["root"]
        if _resolved(packed_from) != _resolved(config.root):
            raise ConfigError(
                f"data.root={config.root}, but data.litdata_dir={config.litdata_dir} holds {packed_from}: "
                f"set data.root={packed_from} to train or test on the packed data, or "
                "data.loader=memory (or stream) to read data.root"
            )
        for key in PACKED_SETTINGS:
            ours, packed = getattr(config, key), meta["data"][key]
            if packed != ours:
                raise ConfigError(
                    f"data.{key}={ours!r}, but data.litdata_dir={config.litdata_dir} was packed with {packed!r}: "
                    f"set data.{key}={packed!r} or pack again"
                )
        splits = meta["splits"]
        parts = {
            s: (
                np.arange(len(splits[s]["labels"])),
                np.array(splits[s]["labels"], dtype=np.int64),
                np.array(splits[s]["sources"], dtype=np.int64),
                np.array(splits[s]["digests"], dtype=DIGEST),
            )
            for s in SPLITS
        }
        return assemble(parts, meta["source_names"], splits["test"]["names"], meta["skipped"])

    def statistics(self, plan: Plan) -> Statistics:
        return self.meta["mean"], self.meta["std"]

    def batches(self, plan: Plan, split: str, train: bool, where: Where) -> Iterable[Batch]:
        """LitData's loader over one split's chunks; it shards the items across DDP ranks and workers itself."""
        part = plan.splits[split]
        if not len(part):  # pack writes no chunks for an empty split
            return []
        drop_last = self.drop_last(len(part), train, where)
        dataset = Positioned(self._packed(split), shuffle=train, seed=self.config.seed, drop_last=drop_last)
        loader = StreamingDataLoader(
            dataset,
            batch_size=self.batch_size(train),
            # one worker for val and test: LitData then yields the split in its packed order, as every loader does
            num_workers=self.config.num_workers if train else min(self.config.num_workers, 1),
            collate_fn=_collate,
            pin_memory=where.pin,
            drop_last=drop_last,
        )
        return Marked(loader, part.duplicates)
