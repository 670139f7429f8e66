"""Test metrics without the test images that were also trained on: `test/acc_dedup`, for train and eval alike.

CIFAKE's test split holds hundreds of files byte-identical to train files, so `test/acc` partly measures
memory. After `trainer.test`, `dedup_metrics` scores the test images without such a copy through the one scorer
and decides at the threshold `test/acc` used; with no duplicates it equals `test/acc` to the last digit.
"""

from __future__ import annotations

import logging

import lightning as L
from torchmetrics.functional.classification import binary_accuracy, binary_auroc

from fakedetect.data.datamodule import ImageDataModule
from fakedetect.metrics.thresholds import decide
from fakedetect.modules.detector import Detector
from fakedetect.reporting.predictions import score, tested_images

log = logging.getLogger(__name__)


def dedup_metrics(model: Detector, datamodule: ImageDataModule, trainer: L.Trainer) -> dict[str, float]:
    """`test/acc_dedup`, `test/auroc_dedup` and the counts `test/n_dedup_removed` (test images byte-identical to a
    train or val file) and `test/n_dedup_groups` (distinct such files), logged to the trainer's loggers.

    Call it right after `trainer.test`: it scores the images that test saw (a `limit_test_batches` prefix too).
    """
    if datamodule.test_duplicates is None:
        raise RuntimeError("dedup_metrics needs a set-up data module (call it after trainer.test)")
    first = tested_images(trainer, datamodule)
    seen = datamodule.test_duplicates[:first]
    metrics = {"test/n_dedup_removed": float(seen.sum()), "test/n_dedup_groups": float(datamodule.duplicate_groups)}
    probs, labels, _ = score(
        model,
        datamodule.dedup_test_dataloader(first),
        datamodule.preprocess,
        trainer.strategy.root_device,
        context=trainer.precision_plugin.forward_context,
    )
    if not len(labels):
        log.warning("every test image has a byte-identical copy in train or val: no test/acc_dedup")
    else:
        metrics["test/acc_dedup"] = float(binary_accuracy(decide(probs, model.decision_threshold), labels))
        if len(labels.unique()) == 2:
            metrics["test/auroc_dedup"] = float(binary_auroc(probs, labels))
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
    log.info(
        "test without the %d test images byte-identical to train or val files: %s",
        int(seen.sum()),
        {k: round(v, 4) for k, v in metrics.items()},
    )
    return metrics
