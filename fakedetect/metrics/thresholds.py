"""The decision rule and the decision thresholds chosen on validation scores: Youden's J and best F1 (FAKE = 1).

One convention everywhere: FAKE when prob > threshold, as torchmetrics' binary metrics call it (a float32
comparison). The ROC and PR curves list cuts `score >= s`; the fitted threshold is therefore the next lower
score, so that `decide` reproduces the chosen point of the curve exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc
from torchmetrics.utilities import dim_zero_cat

# the thresholds SelectedThresholds chooses, in the order of its `compute`
NAMED_THRESHOLDS = ("youden", "f1")


def decide(probs: np.ndarray | torch.Tensor, threshold: float) -> torch.Tensor:
    """1 (FAKE) where prob > threshold, else 0, compared in float32 as torchmetrics' BinaryAccuracy does."""
    return (torch.as_tensor(probs).float() > threshold).long()


def _tensors(probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(probs).float().flatten(), torch.as_tensor(labels).long().flatten()


def youden_threshold(probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """The threshold whose decisions maximize TPR - FPR (the strictest of equal ones)."""
    fpr, tpr, cuts = binary_roc(*_tensors(probs, labels))  # cuts descending, led by 1.0 (nothing called FAKE)
    best = int(torch.argmax(tpr - fpr))
    return float(cuts[best + 1]) if best + 1 < len(cuts) else 0.0


def f1_threshold(probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """The threshold whose decisions maximize F1 of the FAKE class (the most lenient of equal ones)."""
    precision, recall, cuts = binary_precision_recall_curve(*_tensors(probs, labels))  # cuts ascending
    f1 = (2 * precision * recall / (precision + recall)).nan_to_num(0)[:-1]
    best = int(torch.argmax(f1))
    return float(cuts[best - 1]) if best > 0 else 0.0


class SelectedThresholds(Metric):
    """Collects validation probabilities and labels; `compute` returns the (Youden, F1) thresholds over them.

    A torchmetrics Metric, so the scores of every process are gathered under DDP before the choice.
    """

    full_state_update = False
    # list states, as add_state registers them (Module.__getattr__ alone would type them Tensor | Module)
    probs: list[torch.Tensor]
    labels: list[torch.Tensor]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        self.probs.append(probs.detach().float().flatten())
        self.labels.append(labels.detach().long().flatten())

    def compute(self) -> torch.Tensor:
        probs, labels = dim_zero_cat(self.probs), dim_zero_cat(self.labels)
        return probs.new_tensor([youden_threshold(probs, labels), f1_threshold(probs, labels)])
