"""What a run leaves behind besides checkpoints: a metrics JSON and the TensorBoard hparams entry."""

from __future__ import annotations

import json
import logging
import math
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax

from fakedetect.utils.errors import NonFiniteError
from fakedetect.utils.files import write_atomic

log = logging.getLogger(__name__)


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def scalars(metrics: dict) -> dict[str, float]:
    """The logged one-number metrics as the run's results (metrics.json, a sweep's objective); a NaN or infinity among
    them is no result, and stops the run before anything is written from them."""
    values = {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    bad = [f"{k}={v}" for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise NonFiniteError(
            f"{', '.join(bad[:3])}: a logged metric is NaN or infinite, so no result is written (an overflow in the "
            "model or its loss; with 16-bit precision, try trainer.precision=32-true)"
        )
    return values


def training_records(folder: Path) -> Iterator[tuple[Path, dict]]:
    """Every training run's metrics.json under `folder` with its record, oldest first (so that the newest of a kind
    wins where a table keeps one). A record holding NaN or infinity (a diverged run, written before fakedetect refused
    to) is no result: skipped, with a warning naming it."""
    for path in sorted(folder.rglob("metrics.json"), key=lambda p: p.stat().st_mtime):
        record = json.loads(path.read_text())
        if record.get("task") != "train":
            continue
        bad = [k for k, v in record.get("metrics", {}).items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            log.warning("leaving out %s: %s NaN or infinite (a diverged run)", path, ", ".join(bad[:3]))
            continue
        yield path, record


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
