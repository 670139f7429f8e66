"""Trainer callbacks that every training gets, whatever its config lists."""

from __future__ import annotations

from lightning import Callback, LightningModule, Trainer


class LogInterval(Callback):
    """Logs training metrics at least once an epoch: `log_every_n_steps` is capped by the epoch's batch count.

    A short epoch (a subset, a smoke run) would otherwise log no training step, and Lightning would warn about it.
    """

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)  # Lightning sets it when fit is given one
        if datamodule is None:
            return
        try:
            batches = len(datamodule.train_dataloader())
        except TypeError:  # an iterable loader without a length: Lightning does not warn then
            return
        limit = trainer.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        trainer.log_every_n_steps = max(1, min(trainer.log_every_n_steps, batches))  # type: ignore[attr-defined]
