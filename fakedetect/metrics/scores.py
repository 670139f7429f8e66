"""Per-image test scores, and the figures that need every image at once: deduplicated accuracy and AUROC."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor
from torchmetrics.functional.classification import binary_accuracy, binary_auroc

from fakedetect.metrics.thresholds import decide


class Scores(NamedTuple):
    """Per image of a test pass: P(FAKE) float32, label int64, source index int64 (into the data module's
    `source_names`; -1 where the batches carried none) and whether it is byte-identical to a train or val file."""

    probs: Tensor
    labels: Tensor
    sources: Tensor
    duplicates: Tensor


def dedup_metrics(scores: Scores, threshold: float) -> dict[str, float]:
    """`test/acc_dedup` and `test/auroc_dedup` without the test images that were also trained on (CIFAKE's test
    split holds hundreds of byte-identical copies of train files, so `test/acc` partly measures memory), and
    `test/n_dedup_removed`, how many were left out. With no duplicates they equal `test/acc` and `test/auroc`."""
    kept = ~scores.duplicates
    metrics = {"test/n_dedup_removed": float((~kept).sum())}
    probs, labels = scores.probs[kept], scores.labels[kept]
    if len(labels):
        metrics["test/acc_dedup"] = float(binary_accuracy(decide(probs, threshold), labels))
    if len(labels.unique()) == 2:
        metrics["test/auroc_dedup"] = float(binary_auroc(probs, labels))
    return metrics
