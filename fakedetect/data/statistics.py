"""Normalization statistics: the train split's per-channel mean and std, computed once and cached beside the images.

They are taken from train only (never val or test) and handed to the detector, whose preprocessing owns them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from fakedetect.data.pixels import LUMA
from fakedetect.utils.errors import ConfigError
from fakedetect.utils.files import write_atomic

if TYPE_CHECKING:
    from fakedetect.data.config import DataConfig

log = logging.getLogger(__name__)

Statistics = tuple[list[float], list[float]]


def channel_stats(images: np.ndarray, channels: int, index: np.ndarray | None = None, chunk: int = 8192) -> Statistics:
    """Per-channel mean and std in [0, 1] of (N, H, W, 3) uint8 images (the `index` rows of them), in chunks:
    memory stays bounded, and a memory-mapped cache is read once, in file order."""
    rows = np.sort(index) if index is not None else None
    n = len(rows) if rows is not None else len(images)
    total = np.zeros(channels)
    squares = np.zeros(channels)
    count = 0
    for i in range(0, n, chunk):
        x = (images[rows[i : i + chunk]] if rows is not None else images[i : i + chunk]).astype(np.float64) / 255.0
        if channels == 1:
            x = (x @ np.array(LUMA))[..., None]
        total += x.sum(axis=(0, 1, 2))
        squares += (x**2).sum(axis=(0, 1, 2))
        count += x.shape[0] * x.shape[1] * x.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


def train_statistics(
    config: DataConfig, identity: object, train_size: int, compute: Callable[[], Statistics]
) -> Statistics:
    """The train split's statistics (`compute` them unless cached under the settings that decide them); zero mean
    and unit std with data.normalize=false."""
    if not config.normalize:
        return [0.0] * config.channels, [1.0] * config.channels
    if not train_size:
        raise ConfigError(
            f"data.test_fraction={config.test_fraction} leaves no train images to take "
            "normalization statistics from: use it to evaluate a checkpoint, which brings them"
        )
    path = config.cache_dir / "stats" / f"{config.statistics_key(identity)}.json"
    try:
        stats = json.loads(path.read_text())
        mean, std = [float(m) for m in stats["mean"]], [float(s) for s in stats["std"]]
        if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
            raise ValueError(f"mean {mean}, std {std}: not finite, or a std not above 0")
        return mean, std
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("ignoring the unreadable statistics cache %s (%s); computing them again", path, err)
    mean, std = compute()
    write_atomic(path, json.dumps({"mean": mean, "std": std}))
    return mean, std
