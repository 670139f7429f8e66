"""The checkpoint format: its version, and the one place where an older checkpoint is brought up to date.

Format 2 keeps each value once: the normalization statistics as the detector's buffers, the data settings
(classes, resolution, fit, channels) in the stored run config, the device resize as `model.input_size`. Format 1
(checkpoints without a version, from before the data path was redesigned) also kept a copy of the statistics and
settings as the data module's state and the device resize as the backbone's `model.net.input_size`; older ones
of those may lack the statistics buffers or the validation thresholds, or carry the `_orig_mod.` keys of a
compiled net. Exported detectors (`detector.json`) are checkpoint-like dicts and take the same path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from fakedetect.metrics.thresholds import NAMED_THRESHOLDS
from fakedetect.utils.errors import ConfigError

log = logging.getLogger(__name__)

FORMAT_KEY = "fakedetect_format"
FORMAT = 2
# the data module's state in a format-1 checkpoint (its class name, as Lightning saved it)
FORMAT1_DATA_STATE = "ImageDataModule"
# the detector's buffers: statistics, and the Youden / best-F1 thresholds (NaN before any validation)
STATISTICS = ("data_mean", "data_std")
THRESHOLDS_BUFFER = "val_thresholds"


def upgrade(checkpoint: dict[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    """`checkpoint` brought to the current format, in place; a newer format than this fakedetect's is refused in one
    line. Calling it again is a no-op."""
    version = checkpoint.get(FORMAT_KEY, 1)
    if not isinstance(version, int) or version > FORMAT:
        raise ConfigError(
            f"{where}: written in checkpoint format {version!r}, newer than this fakedetect's ({FORMAT}); "
            "upgrade fakedetect to read it"
        )
    if version == 1:
        _from_format1(checkpoint)
        checkpoint[FORMAT_KEY] = FORMAT
    return checkpoint


def unusable(state: Mapping[str, Any]) -> list[str]:
    """The entries of a detector's state dict that make its scores NaN or infinite, each with what is wrong: a floating
    tensor holding NaN or infinity (in `val_thresholds` NaN means none fitted yet) or a `data_std` not above 0.
    Empty when every entry is usable. One host-device synchronization for the whole state."""
    names, flags = [], []
    for name, tensor in state.items():
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point() or not tensor.numel():
            continue
        finite = torch.isfinite(tensor)
        if name == THRESHOLDS_BUFFER:
            finite |= torch.isnan(tensor)
        names.append(f"{name} (NaN or infinite)")
        flags.append(finite.all())
        if name == STATISTICS[1]:
            names.append(f"{name} (0 or negative)")
            flags.append(((tensor > 0) | tensor.isnan()).all())  # a NaN std is told once, as NaN
    if not flags:
        return []
    usable = torch.stack([flag.to(flags[0].device) for flag in flags]).tolist()
    return [name for name, ok in zip(names, usable, strict=True) if not ok]


def _from_format1(checkpoint: dict[str, Any]) -> None:
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        return  # not a checkpoint at all: the loader says so in its own words
    for key in [k for k in state if "._orig_mod." in k]:
        state[key.replace("._orig_mod.", ".", 1)] = state.pop(key)
    if THRESHOLDS_BUFFER not in state:
        log.warning("checkpoint predates val_thresholds: no youden or f1 threshold is known, a number still works")
        state[THRESHOLDS_BUFFER] = torch.full((len(NAMED_THRESHOLDS),), math.nan)
    data = checkpoint.pop(FORMAT1_DATA_STATE, None)
    for name, key in zip(STATISTICS, ("mean", "std"), strict=True):
        if name not in state and isinstance(data, dict) and data.get(key) is not None:
            state[name] = torch.tensor(data[key], dtype=torch.float32)
    config = checkpoint.get("fakedetect_config")
    if isinstance(config, dict) and isinstance(config.get("model"), dict):
        model = config["model"]
        model.pop("n_images", None)  # autoencoders' before their figures moved to a callback
        net = model.get("net")
        if isinstance(net, dict) and "input_size" in net:  # the device resize moved from the backbone to the detector
            model["input_size"] = net.pop("input_size")
