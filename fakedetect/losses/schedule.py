"""How an autoencoder's total loss shares its weight between reconstruction and classification over training."""

from __future__ import annotations

from dataclasses import dataclass

from fakedetect.utils.errors import is_number, require


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
        # named by the model config keys that set them (r_weight, c_weight, c_freeze, c_ramp)
        for key, weight in (("r_weight", self.r_weight), ("c_weight", self.c_weight)):
            require(f"model.{key}", weight, is_number(weight) and weight >= 0, "a number >= 0")
        require(
            "model.c_freeze",
            self.freeze,
            is_number(self.freeze) and 0 <= self.freeze < 1,
            "a number in [0, 1): the fraction of training with the classification term frozen",
        )
        require(
            "model.c_ramp",
            self.ramp,
            is_number(self.ramp) and 0 <= self.ramp <= 1 - self.freeze,
            f"a number in [0, 1 - c_freeze] = [0, {1 - self.freeze:g}]",
        )

    def __call__(self, progress: float) -> tuple[float, float]:
        """(reconstruction weight, classification weight) at this fraction of training."""
        if progress < self.freeze:
            return self.r_weight, 0.0
        if self.ramp == 0:
            return self.r_weight, self.c_weight
        return self.r_weight, self.c_weight * min(1.0, (progress - self.freeze) / self.ramp)
