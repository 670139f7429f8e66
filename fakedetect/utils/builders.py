"""Instantiate the run's parts from a composed config; the only code that reads config groups."""

from __future__ import annotations

import logging

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def resolve_precision(trainer_cfg: DictConfig) -> str:
    """`precision: auto` is bf16-mixed on a bf16-capable GPU, 16-mixed on an older one, else 32-true."""
    precision = str(trainer_cfg.get("precision", "auto"))
    if precision != "auto":
        return precision
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if not on_gpu:
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def build_list(cfg: DictConfig | None) -> list:
    """Every `_target_` entry of a callbacks or logger group, in order."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def build_model(cfg: DictConfig) -> L.LightningModule:
    return instantiate(cfg.model, loss=instantiate(cfg.loss))


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list) -> L.Trainer:
    return instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, precision=resolve_precision(cfg.trainer)
    )


def count_parameters(model: torch.nn.Module, trainable: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)
