"""Decision thresholds chosen on validation scores: Youden's J and best F1 (FAKE = 1 positive)."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc


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
