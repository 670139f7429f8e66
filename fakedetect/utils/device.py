"""The device of a command that scores outside a training config (predict, gradcam), and its Lightning trainer."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


def resolve_device(device: str) -> torch.device:
    """`auto` is the GPU when there is one, else the CPU; any other value is torch's own device name."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)


def device_trainer(device: str, **kwargs: Any) -> L.Trainer:
    """A quiet one-device Trainer for `trainer.predict` / `trainer.test` on `device` (cpu, cuda, cuda:1, auto):
    no logger, checkpoints or progress bar of its own."""
    where = resolve_device(device)
    return L.Trainer(
        accelerator="gpu" if where.type == "cuda" else where.type,
        devices=[where.index] if where.index is not None else 1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        **kwargs,
    )
