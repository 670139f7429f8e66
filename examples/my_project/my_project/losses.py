"""Poly-1 cross-entropy (Leng et al., 2022, "PolyLoss") for one logit per image and 0/1 labels (FAKE = 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fakedetect.utils.errors import is_number, require


class Poly1BCE(nn.Module):
    """BCE + epsilon * (1 - p_t), where p_t is the probability given to the true class: epsilon > 0 keeps pushing
    on images already classified right, epsilon < 0 eases off them; epsilon = 0 is BCE."""

    def __init__(self, epsilon: float = 1.0) -> None:
        super().__init__()
        # a bad value is one line naming the key (`error: loss.epsilon must be ...`), as fakedetect's own losses do
        require("loss.epsilon", epsilon, is_number(epsilon) and epsilon >= -1, "a number >= -1")
        self.epsilon = float(epsilon)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits, targets = logits.float(), labels.float()
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p_true = torch.where(labels.bool(), torch.sigmoid(logits), torch.sigmoid(-logits))
        return (bce + self.epsilon * (1 - p_true)).mean()
