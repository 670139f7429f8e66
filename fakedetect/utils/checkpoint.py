"""Self-contained checkpoints: the resolved run config travels inside, so eval and predict need nothing else.

Normalization statistics and the class mapping travel too, as the data module's own state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fakedetect.data.datamodule import ImageDataModule
from fakedetect.utils.builders import build_model

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


@dataclass
class Trained:
    """A checkpoint's detector in eval mode, with the data module that holds its preprocessing and classes."""

    model: L.LightningModule
    datamodule: ImageDataModule
    config: DictConfig
    global_step: int


def load_trained(ckpt_path: str | Path, data: Mapping[str, Any] | None = None) -> Trained:
    """Rebuild model and data module from a checkpoint alone; `data` values (not None) replace its data config."""
    checkpoint = load_checkpoint(ckpt_path)
    cfg = checkpoint_config(checkpoint, ckpt_path)
    for key, value in (data or {}).items():
        if value is not None:
            cfg.data[key] = value
    datamodule = instantiate(cfg.data)
    datamodule.load_state_dict(checkpoint[type(datamodule).__qualname__])
    model = build_model(cfg)
    model.on_load_checkpoint(checkpoint)  # as Lightning would: lets the module upgrade older checkpoints
    model.load_state_dict(checkpoint["state_dict"])
    return Trained(model.eval(), datamodule, cfg, int(checkpoint.get("global_step", 0)))
