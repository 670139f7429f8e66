"""Binary cross-entropy on logits, taking the integer labels the data module yields."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BCEWithLogits(nn.Module):
    """`pos_weight` > 1 weighs FAKE errors more, for imbalanced data (the write-ups' `class_weight`).

    `label_smoothing` = eps trains towards eps / 2 and 1 - eps / 2 instead of 0 and 1, so confident
    mistakes on noisy labels cost less and logits are not pushed to infinity (the `bce_smooth` loss).
    """

    def __init__(self, pos_weight: float | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.pos_weight, self.label_smoothing = pos_weight, label_smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = None if self.pos_weight is None else logits.new_tensor(self.pos_weight)
        targets = labels.float() * (1.0 - self.label_smoothing) + self.label_smoothing / 2
        return F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=weight)
