"""The per-split metrics a detector logs, FAKE positive."""

from __future__ import annotations

from typing import TypedDict

from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
)


# Inputs are sigmoid probabilities and 0/1 labels by construction; torchmetrics' checks of them would read the
# values back from the device (a host-device synchronization) on every step.
class Unchecked(TypedDict):
    validate_args: bool


UNCHECKED: Unchecked = {"validate_args": False}


def detection_metrics(threshold: float, prefix: str) -> MetricCollection:
    return MetricCollection(
        {
            "acc": BinaryAccuracy(threshold=threshold, **UNCHECKED),
            "precision": BinaryPrecision(threshold=threshold, **UNCHECKED),
            "recall": BinaryRecall(threshold=threshold, **UNCHECKED),
            "f1": BinaryF1Score(threshold=threshold, **UNCHECKED),
            "auroc": BinaryAUROC(**UNCHECKED),
        },
        prefix=prefix,
    )
