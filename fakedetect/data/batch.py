"""What every loader yields and every step receives."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class Batch(NamedTuple):
    """Images (uint8 NCHW from a loader; floats in [0, 1] after training's augmentation), int64 labels, int64
    source indices (into the data module's `source_names`) and bool duplicate marks (a test image byte-identical to
    a train or val file; False elsewhere), so the test loop scores overall, per-source and deduplicated figures in
    one pass."""

    images: Tensor
    labels: Tensor
    sources: Tensor
    duplicates: Tensor
