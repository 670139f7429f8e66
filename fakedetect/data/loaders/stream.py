"""`data.loader=stream`: every file decoded when its batch is drawn, by DataLoader workers, with no decoded cache;
for data of any size. The splits are planned from the listing, the test duplicates from one hashing pass over the
files (cached), and the statistics from a decoded sample of train."""

from __future__ import annotations

import json
import logging
import time
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from fakedetect.data.cache import decode_entries, digest_entries
from fakedetect.data.decode import DIGEST, Fit
from fakedetect.data.layouts import DataLayoutError, Entry
from fakedetect.data.loaders.base import Loader, Where, listing, register
from fakedetect.data.loaders.decoding import SkippingLoader, SkippingTrainLoader, StreamDataset, collate_skipping
from fakedetect.data.sources import Source
from fakedetect.data.splits import Listed, Plan, plan, stratified_sample
from fakedetect.data.statistics import Statistics, channel_stats, train_statistics
from fakedetect.utils.files import write_atomic
from fakedetect.utils.locks import scratch_folder

if TYPE_CHECKING:
    from fakedetect.data.config import DataConfig

log = logging.getLogger(__name__)


@register("stream")
class StreamLoader(Loader):
    """Splits planned over the listing; every batch decoded from the files by workers."""

    def __init__(self, config: DataConfig) -> None:
        super().__init__(config)
        self.entries: list[Entry] = []

    @cached_property
    def source(self) -> Source:
        return Source.open(self.config.root, self.config.max_file_bytes)

    def plan(self) -> Plan:
        self.source.check_streamable()
        self.entries = listing(self.config, self.source)
        rows = Listed(
            np.array([e.label for e in self.entries], dtype=np.int64),
            np.array([e.split for e in self.entries]),
            [e.name for e in self.entries],
            np.array([e.source for e in self.entries]),
            self._digests(),
        )
        return plan(rows, self.config, [])

    def _digests(self) -> np.ndarray:
        """The files' digests, in one pass over the source's bytes, cached beside the decode caches under the
        source's identity (which changes with any file's size or modification time)."""
        path = self.config.cache_dir / "digests" / f"{self.config.listing_key(self.source.identity())}.json"
        names = [e.name for e in self.entries]
        try:
            cached = json.loads(path.read_text())
            if cached["names"] == names:
                return np.array(cached["digests"], dtype=DIGEST)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("ignoring the unreadable digest cache %s (%s); reading the files again", path, err)
        start = time.perf_counter()
        digests = digest_entries(self.source, self.entries)
        self.timings["digest_s"] = time.perf_counter() - start
        log.info(
            "hashed %d files of %s in %.1f s, to find test images duplicated in train",
            len(self.entries),
            self.config.root,
            self.timings["digest_s"],
        )
        write_atomic(path, json.dumps({"names": names, "digests": digests.astype(str).tolist()}))
        return digests

    def statistics(self, plan: Plan) -> Statistics:
        train = [self.entries[i] for i in plan.splits["train"].index]
        return train_statistics(self.config, self.source.identity(), len(train), lambda: self._sampled(train))

    def _sampled(self, train: list[Entry]) -> Statistics:
        """Statistics of a decoded sample of train (data.stats_sample images), in a memory-mapped scratch file:
        20,000 images at 224 px would be 3 GB of RAM."""
        config = self.config
        sample = stratified_sample(train, config.stats_sample, config.seed)
        config.cache_dir.mkdir(parents=True, exist_ok=True)
        # a private folder: removed when done, or by the next cache writer here if this process is killed
        with scratch_folder(config.cache_dir, ".stats") as scratch:
            # Unreadable files are skipped (or raise, with skip_bad=false) as everywhere else, not a crash here.
            images = decode_entries(
                self.source,
                sample,
                config.resolution,
                fit=config.fit,
                workers=config.decode_workers,
                skip_bad=config.skip_bad,
                max_pixels=config.max_pixels,
                folder=scratch / "sample",
            ).images
            if not len(images):
                raise DataLayoutError(
                    f"{config.root}: none of the {len(sample)} train images sampled for the normalization "
                    "statistics could be decoded; check them with python -m fakedetect.audit"
                )
            stats = channel_stats(images, config.channels)
            del images
        return stats

    def batches(self, plan: Plan, split: str, train: bool, where: Where) -> SkippingLoader:
        part, config = plan.splits[split], self.config
        dataset = StreamDataset(
            self.source,
            [self.entries[i] for i in part.index],
            part.sources,
            config.resolution,
            fit=config.fit,
            max_pixels=config.max_pixels,
            skip_bad=config.skip_bad,
            random_fit=train and config.fit == Fit.RANDOM_CROP,
            duplicates=part.duplicates,
        )
        return (SkippingTrainLoader if train else SkippingLoader)(
            dataset,
            # batches of positions as tensors (DataLoader only iterates them), where its stub says lists
            batch_sampler=self.order(part, train, where),  # type: ignore[arg-type]
            num_workers=config.num_workers,
            collate_fn=collate_skipping,
            pin_memory=where.pin,
            persistent_workers=config.num_workers > 0,
        )
