"""A training whose loss, weights or validation metrics turn NaN or infinite stops in one line, and leaves no result."""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch
from torch import Tensor

from fakedetect.modules.checkpoint_format import unusable
from fakedetect.modules.finite import diverged


class StopOnNonFinite(L.Callback):
    """Raises NonFiniteError (`modules.finite.diverged`) naming the step, the value and what to try as soon as the
    training loss, the weights or a validation metric is NaN or infinite; `train` then writes no metrics.json and no
    checkpoint (Lightning runs the checkpoint callbacks after this one, and the Detector refuses to write non-finite
    weights).

    Written here because Lightning has no such check since `terminate_on_nan` went: EarlyStopping's `check_finite`
    watches one monitored metric, at validation, and then ends the fit as if it had finished (exit 0, tested and
    recorded). So that a training step costs no host-device synchronization, the step losses stay on the device
    and are read every `log_every_n_steps` steps, before each validation and at the end of each epoch and of the fit;
    the first non-finite one is named.
    """

    def __init__(self) -> None:
        self._losses: list[tuple[int, int, int, Tensor]] = []  # (step, epoch, batch, loss) not yet read

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._losses = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, Tensor):
            self._losses.append((trainer.global_step, trainer.current_epoch, batch_idx, loss.detach()))
        if len(self._losses) >= trainer.log_every_n_steps:  # type: ignore[attr-defined]  # set by Lightning at init
            self._check_losses(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check_losses(trainer)
            self._check_weights(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        bad = [
            f"{name} is {float(value)}"
            for name, value in trainer.callback_metrics.items()
            if name.startswith("val/") and not torch.isfinite(value).all()
        ]
        self._stop(trainer, bad[0] if bad else None, f"validation after step {trainer.global_step}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_losses(trainer)
        self._check_weights(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_losses(trainer)

    def _check_losses(self, trainer: L.Trainer) -> None:
        losses, self._losses = self._losses, []
        found = None
        if losses:
            finite = torch.stack([loss.float().reshape(()) for *_, loss in losses]).isfinite().tolist()
            first = next((i for i, ok in enumerate(finite) if not ok), None)
            if first is not None:
                step, epoch, batch, loss = losses[first]
                found = f"the training loss is {float(loss)} at step {step} (epoch {epoch}, batch {batch})"
        self._stop(trainer, found, "training")

    def _check_weights(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bad = unusable(pl_module.state_dict())
        found = f"after step {trainer.global_step} the weights are unusable: {bad[0]}" if bad else None
        self._stop(trainer, found, "training")

    @staticmethod
    def _stop(trainer: L.Trainer, found: str | None, stage: str) -> None:
        """Raise with `found` when any process found a non-finite value (all processes raise)."""
        if trainer.strategy.reduce_boolean_decision(found is not None, all=False):
            raise diverged(trainer, found or f"another process found a NaN or infinity in {stage}")
