"""Focal loss (Lin et al., 2017) on one logit per image: torchvision's implementation, with the framework's labels."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from fakedetect.utils.errors import is_number, require


class FocalLoss(nn.Module):
    """BCE scaled by (1 - p_t) ** gamma, so images the net already gets right count less and hard ones more.

    `alpha` weighs FAKE terms by alpha and REAL terms by 1 - alpha (None: no weighting); `pos_weight`
    multiplies FAKE terms as in BCEWithLogits. gamma = 0 with alpha = None is plain BCE.
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0, pos_weight: float | None = None) -> None:
        super().__init__()
        require(
            "loss.alpha",
            alpha,
            alpha is None or (is_number(alpha) and 0 <= alpha <= 1),
            "null (no weighting) or a number in [0, 1]",
        )
        require("loss.gamma", gamma, is_number(gamma) and gamma >= 0, "a number >= 0")
        require(
            "loss.pos_weight",
            pos_weight,
            pos_weight is None or (is_number(pos_weight) and pos_weight > 0),
            "null or a number > 0",
        )
        self.alpha, self.gamma, self.pos_weight = alpha, gamma, pos_weight

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        alpha = -1.0 if self.alpha is None else self.alpha  # torchvision's "no alpha"
        loss = sigmoid_focal_loss(logits.float(), labels.float(), alpha=alpha, gamma=self.gamma, reduction="none")
        if self.pos_weight is not None:
            loss = torch.where(labels.bool(), loss * self.pos_weight, loss)
        return loss.mean()
