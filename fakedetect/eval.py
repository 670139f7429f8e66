"""`python -m fakedetect.eval ckpt_path=...`: test a checkpoint on one or several test sets; report, per-source
table and robustness.

The decision threshold is the checkpoint's own (chosen on the training run's validation split), so eval
reproduces the test metrics of training; `thresholds=refit` fits Youden's and best-F1 thresholds again on the
validation split of the data given, before testing. `test_sets={name: {data overrides}, ...}` evaluates each set
(the checkpoint's data config with eval's `data.*` and the set's own values over it) and writes one per-source
table across them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from fakedetect.callbacks.figures import Reconstructions, TestFigures
from fakedetect.callbacks.test_scores import TestScores
from fakedetect.data.datamodule import DATA_KEYS, ImageDataModule
from fakedetect.metrics.scores import Scores
from fakedetect.modules.detector import Detector
from fakedetect.reporting.per_source import write_per_source
from fakedetect.reporting.report import ConfidentMistakes, write_report
from fakedetect.reporting.robustness import parse_condition, robustness_table, write_robustness
from fakedetect.utils.app import command
from fakedetect.utils.builders import build_list, build_trainer
from fakedetect.utils.checkpoint import load_trained
from fakedetect.utils.errors import ConfigError
from fakedetect.utils.records import machine, plain, print_config, scalars, write_metrics
from fakedetect.utils.signals import doing

log = logging.getLogger(__name__)

THRESHOLD_SOURCES = ("checkpoint", "refit")
SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
EXAMPLE = "test_sets={cifake:{root:PATH},web60:{root:PATH,test_fraction:1.0}}"


def named_test_sets(cfg: DictConfig) -> dict[str | None, dict[str, Any]]:
    """Set name -> the data values that replace the checkpoint's own: eval's non-null `data.*`, then the set's.
    Without `test_sets`, one unnamed set (None): the checkpoint's data with eval's `data.*`."""
    data = cfg.get("data")
    base = {k: v for k, v in plain(data).items() if v is not None} if data else {}
    named = cfg.get("test_sets") or {}
    if not isinstance(named, Mapping):
        raise ConfigError(f"test_sets={named}: give named data overrides, e.g. {EXAMPLE}")
    sets: dict[str | None, dict[str, Any]] = {}
    for name, values in named.items():
        if not SET_NAME.fullmatch(str(name)):
            raise ConfigError(
                f"test_sets.{name}: a set name is letters, digits, '_', '.' or '-' (it names the "
                f"set's report folder), e.g. {EXAMPLE}"
            )
        if not isinstance(values, DictConfig) or not values:
            raise ConfigError(
                f"test_sets.{name}={values}: give the set's data overrides, at least its root, e.g. {EXAMPLE}"
            )
        unknown = sorted(set(values) - DATA_KEYS)
        if unknown:
            raise ConfigError(
                f"test_sets.{name}.{unknown[0]}: not a data setting; a test set takes data keys "
                f"({', '.join(sorted(DATA_KEYS))})"
            )
        sets[str(name)] = {**base, **plain(values)}
    return sets or {None: base}


def set_loggers(cfg: DictConfig, name: str | None) -> list:
    """The configured loggers; a named test set logs into its own version folder (tensorboard/<name>/), so each
    set is one run in TensorBoard with the same tags (test/acc, test/source/<source>/acc, report/...)."""
    loggers = cfg.get("logger")
    if name is None or not loggers:
        return build_list(loggers)
    own = OmegaConf.create(plain(loggers))
    for entry in own.values():
        if isinstance(entry, DictConfig) and "_target_" in entry:
            entry.version = name
    return build_list(own)


def evaluate_set(cfg: DictConfig, data: dict[str, Any], name: str | None, robustness: list[str], folder: Path) -> dict:
    """Test the checkpoint on one set; its report, robustness and per-source rows go to `folder`. Returns the
    set's record (metrics, thresholds, report, robustness, per_source)."""
    trained = load_trained(cfg.ckpt_path, data, cfg.get("trust"))
    model, datamodule, run_cfg = trained.model, trained.datamodule, trained.config
    trained.choose_tta(cfg.get("tta"))
    where = f"test set {name}" if name else f"data.root={run_cfg.data.root}"
    if cfg.thresholds == "refit":
        refit_thresholds(cfg, model, datamodule, where)
    threshold = model.decision_threshold
    mistakes = ConfidentMistakes(threshold)
    tested = TestScores(name or "test", keep=mistakes if cfg.get("report") else None)
    trainer = build_trainer(cfg, callbacks=[TestFigures(), Reconstructions(), tested], loggers=set_loggers(cfg, name))
    with doing(f"testing {where}"):
        trainer.test(model, datamodule=datamodule)
    metrics = scalars(trainer.callback_metrics)
    clean = tested.scores
    if clean is None:
        raise ConfigError(f"{where}: the test split is empty, so nothing was scored (data.root, data.test_limit)")
    known = {"0.5": 0.5, **{n: t for n, t in model.thresholds().items() if t is not None}}
    record: dict = {
        "data_root": run_cfg.data.root,
        "tta": model.tta,
        "thresholds": {**known, "selected": model.threshold_name, "value": threshold, "source": cfg.thresholds},
        "per_source": tested.rows,
    }
    with doing(f"writing the report of {where} in {folder}", f"{folder} may hold part of the report"):
        if cfg.get("report") and trainer.is_global_zero:  # every process holds every score; one writes the files
            record["report"] = write_report(
                folder, clean.probs, clean.labels, mistakes, known, datamodule.classes, trainer.loggers
            )
        if robustness:

            def degraded(transform: Callable[[torch.Tensor], torch.Tensor] | None) -> Scores:
                return clean if transform is None else degraded_scores(cfg, model, datamodule, transform)

            record["robustness"] = robustness_table(degraded, threshold, robustness)
            if trainer.is_global_zero:
                write_robustness(folder, record["robustness"], trainer.loggers)
    for logger in trainer.loggers:
        logger.finalize("success")
    record["metrics"] = metrics
    return record


def refit_thresholds(cfg: DictConfig, model: Detector, datamodule: ImageDataModule, where: str) -> None:
    """Youden's and best-F1 thresholds fitted again on the validation split of the data given: the detector's own
    validation hooks choose them, in a validation pass logged nowhere."""
    datamodule.setup("validate")
    labels = datamodule.splits["val"].labels
    if len(np.unique(labels)) < 2:
        raise ConfigError(
            f"thresholds=refit: the validation split of {where} does not hold both classes "
            f"({len(labels)} images), so no threshold can be fitted on it; use thresholds=checkpoint"
        )
    build_trainer(cfg, callbacks=[], loggers=[]).validate(model, datamodule=datamodule, verbose=False)


def degraded_scores(
    cfg: DictConfig, model: Detector, datamodule: ImageDataModule, transform: Callable[[torch.Tensor], torch.Tensor]
) -> Scores:
    """The test split scored again with `transform` degrading every uint8 batch first, in a test pass logged
    nowhere (a robustness row)."""
    tested = TestScores()
    datamodule.test_transform = transform
    try:
        build_trainer(cfg, callbacks=[tested], loggers=[]).test(model, datamodule=datamodule, verbose=False)
    finally:
        datamodule.test_transform = None
    assert tested.scores is not None  # the clean pass scored the same split
    return tested.scores


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Every test set's metrics (a named set's keys prefixed `<name>/`); writes metrics.json and report/."""
    if cfg.thresholds not in THRESHOLD_SOURCES:
        raise ConfigError(
            f"thresholds={cfg.thresholds}: use checkpoint (those the training run chose on its "
            "validation split) or refit (fitted again on this data's validation split)"
        )
    robustness = list(cfg.robustness.conditions) if cfg.robustness.get("enabled") else []
    for condition in robustness:
        parse_condition(condition)  # a typo stops the run before anything is scored
    sets = named_test_sets(cfg)
    if cfg.get("print_config"):
        print_config(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, verbose=False)
    out = Path(cfg.paths.output_dir)
    record: dict = {"task": "eval", "ckpt_path": str(cfg.ckpt_path), "machine": machine()}
    with doing(f"evaluating {cfg.ckpt_path}", f"no metrics.json was written to {out}: run eval again"):
        results = {
            name: evaluate_set(cfg, data, name, robustness, out / "report" / (name or ""))
            for name, data in sets.items()
        }
        rows = [row for result in results.values() for row in result["per_source"]]
        rank_zero_only(write_per_source)(out / "report", rows)
    if None in results:
        record.update(results[None])
        metrics = results[None]["metrics"]
    else:
        record["test_sets"] = results
        record["per_source"] = rows
        metrics = {f"{name}/{k}": v for name, result in results.items() for k, v in result["metrics"].items()}
        record["metrics"] = metrics
    rank_zero_only(write_metrics)(out / "metrics.json", record)
    return metrics


@command("eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
