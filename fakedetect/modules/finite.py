"""What a detector's training does with numbers that turned, or would turn, NaN or infinite: the optimizer's
settings checked before the first step, and the one line that ends a diverged run."""

from __future__ import annotations

import math
import os

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from fakedetect.utils.errors import ConfigError, NonFiniteError


def finite_hyperparameters(optimizer: torch.optim.Optimizer) -> None:
    """An optimizer whose learning rate, momentum, betas, ... are infinite or NaN would turn the weights NaN at the
    first step: one line naming the value instead. torch lets `inf` and NaN through some of its checks, and a
    scheduler's arithmetic makes them of finite settings (OneCycleLR's `max_lr / div_factor`, `div_factor=1e-320`);
    commands have refused non-finite settings already (`errors.refuse_non_finite`)."""
    for group in optimizer.param_groups:
        for key, value in group.items():
            numbers = value if isinstance(value, (tuple, list)) and key != "params" else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
                raise ConfigError(
                    f"the optimizer's {key} is {value} (from model.optimizer, the net's lr_scale or model.scheduler): "
                    "a learning rate, momentum or decay must be a finite number"
                )


def diverged(trainer: L.Trainer, found: str) -> NonFiniteError:
    """The one line that ends a training whose loss, weights or scores turned non-finite: what was `found`, and what to
    try (the learning rate it had, gradient clipping, 32-bit precision after a 16-bit one)."""
    lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
    tries = [
        f"a lower model.optimizer.lr (now {lr:g})" if isinstance(lr, float) else "a lower model.optimizer.lr",
        "gradient clipping (trainer.gradient_clip_val=1.0)",
    ]
    if "16" in str(trainer.precision):
        tries.append("trainer.precision=32-true")
    checkpoints = trainer.checkpoint_callback
    kept = (
        f"; the best checkpoint before it: {checkpoints.best_model_path}"
        # a file: the path is set before the write, which a checkpoint of unusable weights never finishes
        if isinstance(checkpoints, ModelCheckpoint) and os.path.isfile(checkpoints.best_model_path)
        else ""
    )
    return NonFiniteError(f"training diverged: {found}, so the run stops with no result; try {', '.join(tries)}{kept}")
