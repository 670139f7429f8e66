"""What a run leaves behind besides checkpoints: a metrics JSON and the TensorBoard hparams entry."""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path
from typing import Any, cast

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax

from fakedetect.utils.files import write_atomic

log = logging.getLogger(__name__)


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


def write_metrics(path: Path, record: dict) -> None:
    write_atomic(path, json.dumps(record, indent=2, sort_keys=True))
    log.info("metrics written to %s", path)


def plain(cfg: DictConfig) -> dict[str, Any]:
    """A config node resolved to plain dicts and lists (to_container's typing cannot say a DictConfig gives a dict)."""
    return cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=True))


def flat_hparams(cfg: DictConfig) -> dict[str, object]:
    """The run's data, model, loss and trainer settings as dotted keys of scalars, for the hparams view."""
    out: dict[str, object] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node if isinstance(node, (int, float, str, bool)) else str(node)

    container = plain(cfg)
    walk({k: container[k] for k in ("data", "model", "loss", "trainer", "seed") if k in container}, "")
    return out


def log_hparams(loggers: list, cfg: DictConfig, metrics: dict[str, float]) -> None:
    """One hparams entry per run with its final metrics, so runs and sweeps compare in TensorBoard."""
    params = flat_hparams(cfg)
    hp_metrics = {f"hp/{k.replace('/', '_')}": v for k, v in metrics.items()}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=hp_metrics)
        else:
            logger.log_hyperparams(params)
            logger.log_metrics(hp_metrics)


def print_config(cfg: DictConfig) -> None:
    Console().print(Syntax(OmegaConf.to_yaml(cfg, resolve=False), "yaml", theme="ansi_dark"))
