"""How an autoencoder's total loss shares its weight between reconstruction and classification over training."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LossSchedule:
    """total = r_weight * reconstruction + c(progress) * classification, progress = fraction of training done.

    The classification term is frozen (weight 0) for the first `freeze` of training, so the encoder first
    learns to reconstruct; then its weight grows linearly to `c_weight` over the next `ramp` of training
    (progressive weighting; ramp = 0 switches it on at once).
    """

    r_weight: float = 1.0
    c_weight: float = 1.0
    freeze: float = 0.1
    ramp: float = 0.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.freeze < 1.0 and 0.0 <= self.ramp <= 1.0 - self.freeze):
            raise ValueError(f"need 0 <= freeze < 1 and 0 <= ramp <= 1 - freeze, got freeze={self.freeze} "
                             f"ramp={self.ramp}")

    def __call__(self, progress: float) -> tuple[float, float]:
        """(reconstruction weight, classification weight) at this fraction of training."""
        if progress < self.freeze:
            return self.r_weight, 0.0
        if self.ramp == 0:
            return self.r_weight, self.c_weight
        return self.r_weight, self.c_weight * min(1.0, (progress - self.freeze) / self.ramp)
