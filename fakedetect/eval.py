"""`python -m fakedetect.eval ckpt_path=...`: test a checkpoint, write its report and robustness table.

The decision threshold is the checkpoint's own (chosen on the training run's validation split), so eval
reproduces the test metrics of training; `thresholds=refit` fits Youden's and best-F1 thresholds again on the
validation split of the data given, before testing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig

from fakedetect.metrics.thresholds import SelectedThresholds
from fakedetect.reporting.dedup import dedup_metrics
from fakedetect.reporting.predictions import choose_tta, score
from fakedetect.reporting.report import ConfidentMistakes, write_report
from fakedetect.reporting.robustness import parse_condition, robustness_table, write_robustness
from fakedetect.utils.builders import build_list, build_trainer
from fakedetect.utils.checkpoint import load_trained
from fakedetect.utils.errors import ConfigError, one_line_errors
from fakedetect.utils.records import machine, print_config, scalars, write_metrics

log = logging.getLogger(__name__)

THRESHOLD_SOURCES = ("checkpoint", "refit")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if cfg.thresholds not in THRESHOLD_SOURCES:
        raise ConfigError(f"thresholds={cfg.thresholds}: use checkpoint (those the training run chose on its "
                          "validation split) or refit (fitted again on this data's validation split)")
    robustness = cfg.robustness.conditions if cfg.robustness.get("enabled") else []
    for condition in robustness:
        parse_condition(condition)  # a typo stops the run before anything is scored
    if cfg.get("print_config"):
        print_config(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed)
    trained = load_trained(cfg.ckpt_path, cfg.get("data"))
    model, datamodule, run_cfg = trained.model, trained.datamodule, trained.config
    choose_tta(model, cfg.get("tta"))
    trainer = build_trainer(cfg, callbacks=[], loggers=build_list(cfg.get("logger")))

    def scores(split: str, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        """A split scored as the test step scores it: its own loader, device and precision."""
        loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
        return score(model, loader, datamodule.preprocess, trainer.strategy.root_device,
                     context=trainer.precision_plugin.forward_context, **kwargs)

    if cfg.thresholds == "refit":
        datamodule.setup("validate")
        fitted = SelectedThresholds()
        fitted.update(*scores("val"))
        model.val_thresholds.copy_(fitted.compute())
    trainer.test(model, datamodule=datamodule)
    metrics = {**scalars(trainer.callback_metrics), **dedup_metrics(model, datamodule, trainer)}
    threshold = model.decision_threshold
    known = {"0.5": 0.5, **{name: t for name, t in model.thresholds().items() if t is not None}}
    out = Path(cfg.paths.output_dir)
    record = {"task": "eval", "ckpt_path": str(cfg.ckpt_path), "data_root": run_cfg.data.root,
              "machine": machine(), "metrics": metrics, "tta": model.tta,
              "thresholds": {**known, "selected": model.threshold_name, "value": threshold, "source": cfg.thresholds}}
    if cfg.get("report") or robustness:
        mistakes = ConfidentMistakes(threshold)
        clean = scores("test", keep=mistakes)
        if cfg.get("report"):
            record["report"] = write_report(out / "report", *clean, mistakes, known, datamodule.classes,
                                            trainer.loggers)
        if robustness:

            def degraded(transform: Callable[[torch.Tensor], torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
                return clean if transform is None else scores("test", transform=transform)

            rows = robustness_table(degraded, threshold, robustness)
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
