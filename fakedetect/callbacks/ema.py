"""An exponential moving average of a Detector's weights: Lightning's `EMAWeightAveraging`, fitted to detectors.

Lightning's callback validates the averaged weights (swapped in for each validation), writes them as the
checkpoint's `state_dict` (the current weights under `current_model_state`, for resuming), and leaves them in
the module when fitting ends, so what is selected, checkpointed, tested, evaluated and exported is the average.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from fakedetect.utils.errors import ConfigError, is_number


def warmup_ema(decay: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """EMA whose decay grows as min(decay, (1 + n) / (10 + n)) with the updates n (TensorFlow's
    ExponentialMovingAverage `num_updates`): early weights fade fast, so short runs are not stuck near the start."""

    @torch.no_grad()
    def update(average: Tensor, current: Tensor, n_averaged: Tensor) -> Tensor:
        rate = torch.clamp((1 + n_averaged) / (10 + n_averaged), max=decay).to(average.device)
        return rate * average + (1 - rate) * current

    return update


class EMA(EMAWeightAveraging):
    """`EMAWeightAveraging(decay, ...)` with an optional warm-up of the decay (`warmup_ema`).

    Lightning's callback also restores a checkpoint's current weights when testing it; here only a resumed fit
    does, so `train`'s test scores the averaged weights, as eval and predict do.
    The Detector's `val_thresholds` are not weights but the thresholds fitted on the validation scores of the
    averaged weights: after each validation the average takes the module's, so a checkpoint's state dict and
    its recorded `thresholds` agree (averaged, they would stay NaN from before the first validation).
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True, **kwargs: Any) -> None:
        if not (is_number(decay) and 0 < decay < 1):
            raise ConfigError(
                f"callbacks.ema.decay={decay}: a number in (0, 1), e.g. 0.999 (closer to 1 averages over more steps)"
            )
        super().__init__(decay=decay, **kwargs)
        if warmup:
            self._kwargs["avg_fn"] = warmup_ema(decay)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Lightning restores callbacks in test too, where its callback (still holding the fit's average) would load
        # the current, not the averaged, weights: only a resumed fit restores both
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning runs checkpoint callbacks last, so the checkpoint written after this validation sees them
        thresholds = getattr(pl_module, "val_thresholds", None)
        if self._average_model is not None and thresholds is not None:
            self._average_model.module.get_buffer("val_thresholds").copy_(thresholds)
