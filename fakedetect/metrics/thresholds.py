"""Decision thresholds chosen on validation scores: Youden's J and best F1 (FAKE = 1 positive).

A threshold is one of the scores, the curves' convention: FAKE when prob >= threshold. torchmetrics' own
metrics call FAKE at prob > threshold, which differs only for a score exactly equal to it.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc
from torchmetrics.utilities import dim_zero_cat


def _tensors(probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(probs).float().flatten(), torch.as_tensor(labels).long().flatten()


def youden_threshold(probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """The threshold maximizing TPR - FPR on the ROC curve."""
    fpr, tpr, thresholds = binary_roc(*_tensors(probs, labels))
    return float(thresholds[torch.argmax(tpr - fpr)].clamp(0, 1))


def f1_threshold(probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """The threshold maximizing F1 of the FAKE class on the precision-recall curve."""
    precision, recall, thresholds = binary_precision_recall_curve(*_tensors(probs, labels))
    f1 = (2 * precision * recall / (precision + recall)).nan_to_num(0)[:-1]
    return float(thresholds[torch.argmax(f1)])


class SelectedThresholds(Metric):
    """Collects validation probabilities and labels; `compute` returns the (Youden, F1) thresholds over them.

    A torchmetrics Metric, so the scores of every process are gathered under DDP before the choice.
    """

    full_state_update = False

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
