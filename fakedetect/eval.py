"""`python -m fakedetect.eval ckpt_path=...`: test a checkpoint, write its report and robustness table."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig

from fakedetect.metrics.thresholds import f1_threshold, youden_threshold
from fakedetect.reporting.predictions import predict_images, split_images
from fakedetect.reporting.report import write_report
from fakedetect.reporting.robustness import robustness_table, write_robustness
from fakedetect.utils.builders import build_list, build_trainer
from fakedetect.utils.checkpoint import load_trained
from fakedetect.utils.errors import one_line_errors
from fakedetect.utils.records import machine, print_config, scalars, write_metrics

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if cfg.get("print_config"):
        print_config(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed)
    trained = load_trained(cfg.ckpt_path, cfg.get("data"))
    model, datamodule, run_cfg = trained.model, trained.datamodule, trained.config
    trainer = build_trainer(cfg, callbacks=[], loggers=build_list(cfg.get("logger")))
    trainer.test(model, datamodule=datamodule)
    metrics = scalars(trainer.callback_metrics)
    out = Path(cfg.paths.output_dir)
    record = {"task": "eval", "ckpt_path": str(cfg.ckpt_path), "data_root": run_cfg.data.root,
              "machine": machine(), "metrics": metrics}
    if cfg.get("report") or cfg.robustness.get("enabled"):
        device = trainer.strategy.root_device

        def score(images: torch.Tensor) -> np.ndarray:
            return predict_images(model.net, datamodule, images, cfg.batch_size, device)

        val_images, val_labels = split_images(datamodule, "val")
        val_probs = score(val_images)
        thresholds = {"0.5": 0.5, "youden": youden_threshold(val_probs, val_labels),
                      "f1": f1_threshold(val_probs, val_labels)}
        images, labels = split_images(datamodule, "test")
        if cfg.get("report"):
            record["report"] = write_report(out / "report", score(images), labels, images, thresholds, trainer.loggers)
        if cfg.robustness.get("enabled"):
            rows = robustness_table(score, images, labels, cfg.robustness.conditions)
            write_robustness(out / "report", rows, trainer.loggers)
            record["robustness"] = rows
    if trainer.is_global_zero:
        write_metrics(out / "metrics.json", record)
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
@one_line_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
