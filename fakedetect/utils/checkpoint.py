"""Self-contained checkpoints: the resolved run config travels inside, so eval and predict need nothing else.

Normalization statistics and the class mapping travel too, as the data module's own state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

CONFIG_KEY = "fakedetect_config"


class StoreConfig(L.Callback):
    def __init__(self, config: dict) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.config


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # The checkpoint holds plain config dicts and hyperparameters, written by this framework.
    return torch.load(path, map_location="cpu", weights_only=False)


def checkpoint_config(checkpoint: dict[str, Any], path: str | Path = "") -> DictConfig:
    if CONFIG_KEY not in checkpoint:
        raise KeyError(f"{path}: no '{CONFIG_KEY}' in this checkpoint; was it written by fakedetect.train?")
    return OmegaConf.create(checkpoint[CONFIG_KEY])
