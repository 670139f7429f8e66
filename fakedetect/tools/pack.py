"""A dataset as LitData chunks, for `data.loader=litdata` (the `python -m fakedetect.pack` command).

The data module plans the splits and decodes them into its memory-mapped cache (bounded memory, every core);
`litdata.optimize` then copies each split's rows, in split order, into chunks with their label and source.
"""

from __future__ import annotations

import json
import logging
import shutil
from functools import lru_cache, partial
from pathlib import Path

import numpy as np

from fakedetect.data.datamodule import ImageDataModule
from fakedetect.data.layouts import SPLITS
from fakedetect.data.loaders.litdata import PACK_META
from fakedetect.utils.errors import ConfigError
from fakedetect.utils.signals import doing

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _rows(images: str) -> np.ndarray:
    """The cache's images memory-mapped once per packing process, not once per item."""
    return np.load(images, mmap_mode="r")


def _item(position: int, images: str, index: np.ndarray, labels: np.ndarray, sources: np.ndarray) -> dict:
    row = _rows(images)[index[position]]
    return {"image": np.ascontiguousarray(row), "label": int(labels[position]), "source": int(sources[position])}


def pack(datamodule: ImageDataModule, output: str, chunk_bytes: str = "64MB", overwrite: bool = False) -> dict:
    """Write every non-empty split of `datamodule` (loader=cached) as chunks under `output`; returns the meta."""
    from litdata import optimize

    target = Path(output)
    if target.is_dir() and any(target.iterdir()):
        if not (target / PACK_META).exists():  # never delete folders pack did not write (a dataset's train/, say)
            raise ConfigError(
                f"output={output} is a folder with files that pack did not write (no {PACK_META}; "
                "or an interrupted pack): give a new or empty folder"
            )
        if not overwrite:
            raise ConfigError(
                f"output={output} already holds packed data ({PACK_META}); pass overwrite=true or another output"
            )
        (target / PACK_META).unlink()  # until the new pack is whole
    _rows.cache_clear()  # a cache rewritten under the same name since an earlier pack in this process
    datamodule.prepare_data()
    datamodule.setup("fit")
    data = datamodule.decoded()  # the memory-mapped cache setup planned the splits over
    if not isinstance(data.images, np.memmap) or data.images.filename is None:
        raise TypeError("pack copies the rows of a memory-mapped decode cache (ImageDataModule.decoded's images)")
    images = data.images.filename
    splits: dict[str, dict[str, list]] = {}
    meta = {
        "data": {
            "classes": datamodule.classes,
            "resolution": datamodule.resolution,
            "fit": datamodule.fit,
            "channels": datamodule.channels,
            "root": datamodule.root,
        },
        "source_names": datamodule.source_names,
        "mean": datamodule.mean,
        "std": datamodule.std,
        "skipped": datamodule.skipped,
        "splits": splits,
    }
    incomplete = f"{target} holds an incomplete pack (no {PACK_META}): delete it, or pack into an empty folder"
    with doing(f"packing {datamodule.root} into {target}", incomplete):
        for split in SPLITS:
            part = datamodule.splits[split]
            splits[split] = {
                "names": [data.names[i] for i in part.index],
                "labels": part.labels.tolist(),
                "sources": part.sources.tolist(),
                "digests": data.digests[part.index].astype(str).tolist(),
            }
            folder = target / split
            if folder.exists():
                shutil.rmtree(folder)
            if not len(part):
                continue
            # one worker: the chunks keep the split's order (test order is what the dedup mask follows); the rows are
            # decoded already, so this is a copy
            optimize(
                fn=partial(_item, images=images, index=part.index, labels=part.labels, sources=part.sources),
                inputs=list(range(len(part))),
                output_dir=str(folder),
                chunk_bytes=chunk_bytes,
                num_workers=1,
                keep_data_ordered=True,
                start_method="fork",
                verbose=False,
            )
            log.info("packed %d %s images into %s", len(part), split, folder)
    (target / PACK_META).write_text(json.dumps(meta))
    return meta
