"""Binary cross-entropy on logits, taking the integer labels the data module yields."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BCEWithLogits(nn.Module):
    """`pos_weight` > 1 weighs FAKE errors more, for imbalanced data."""

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = None if self.pos_weight is None else logits.new_tensor(self.pos_weight)
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=weight)
