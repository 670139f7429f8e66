"""Binary cross-entropy on logits, taking the integer labels the data module yields."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fakedetect.utils.errors import is_number, require


class BCEWithLogits(nn.Module):
    """`pos_weight` > 1 weighs FAKE errors more, for imbalanced data (the write-ups' `class_weight`).

    `label_smoothing` = eps trains towards eps / 2 and 1 - eps / 2 instead of 0 and 1, so confident
    mistakes on noisy labels cost less and logits are not pushed to infinity (the `bce_smooth` loss).
    """

    def __init__(self, pos_weight: float | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        require(
            "loss.pos_weight",
            pos_weight,
            pos_weight is None or (is_number(pos_weight) and pos_weight > 0),
            "null or a number > 0",
        )
        require(
            "loss.label_smoothing",
            label_smoothing,
            is_number(label_smoothing) and 0 <= label_smoothing < 1,
            "a number in [0, 1)",
        )
        self.pos_weight, self.label_smoothing = pos_weight, label_smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = None if self.pos_weight is None else logits.new_tensor(self.pos_weight)
        targets = labels.float() * (1.0 - self.label_smoothing) + self.label_smoothing / 2
        return F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=weight)
