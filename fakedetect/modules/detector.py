"""The classifier LightningModule shared by every net that outputs one logit per image."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryConfusionMatrix,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    BinaryROC,
)

from fakedetect.reporting.figures import log_figure


def detection_metrics(threshold: float, prefix: str) -> MetricCollection:
    return MetricCollection(
        {
            "acc": BinaryAccuracy(threshold=threshold),
            "precision": BinaryPrecision(threshold=threshold),
            "recall": BinaryRecall(threshold=threshold),
            "f1": BinaryF1Score(threshold=threshold),
            "auroc": BinaryAUROC(),
        },
        prefix=prefix,
    )


class Detector(L.LightningModule):
    """Trains `net` with `loss`; logs accuracy, precision, recall, F1 and AUROC per split, FAKE positive.

    `optimizer` and `scheduler` are factories (e.g. functools.partial) taking the parameters and the
    optimizer; a scheduler that accepts `total_steps` (OneCycleLR, say) is given the run's step count.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        scheduler_interval: str = "epoch",
        threshold: float = 0.5,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net", "loss", "optimizer", "scheduler"])
        self.net, self.loss = net, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.threshold = threshold
        self.train_acc = BinaryAccuracy(threshold=threshold)
        self.val_metrics = detection_metrics(threshold, "val/")
        self.test_metrics = detection_metrics(threshold, "test/")
        self.test_confusion = BinaryConfusionMatrix(threshold=threshold)
        self.test_roc = BinaryROC()
        self.val_acc_best = MaxMetric()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def setup(self, stage: str) -> None:
        if self.trainer.strategy.root_device.type == "cuda":
            self.net.to(memory_format=torch.channels_last)
        if self.hparams.compile and stage == "fit":
            self.net = torch.compile(self.net)

    def _step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch
        logits = self(x)
        return self.loss(logits, y), logits.detach().float().sigmoid(), y

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, probs, y = self._step(batch)
        self.train_acc(probs, y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def on_train_start(self) -> None:
        self.val_acc_best.reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, probs, y = self._step(batch)
        self.val_metrics.update(probs, y)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log_dict(values, prog_bar=False)
        self.val_acc_best(values["val/acc"])
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, probs, y = self._step(batch)
        self.test_metrics.update(probs, y)
        self.test_confusion.update(probs, y)
        self.test_roc.update(probs, y)
        self.log("test/loss", loss, on_step=False, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()
        fig, _ = self.test_confusion.plot(labels=["REAL", "FAKE"])
        log_figure(self.loggers, "test/confusion_matrix", fig, self.global_step)
        fig, _ = self.test_roc.plot(score=True)
        log_figure(self.loggers, "test/roc", fig, self.global_step)
        self.test_confusion.reset()
        self.test_roc.reset()

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        kwargs = {}
        if "total_steps" in inspect.signature(self.scheduler_factory).parameters:
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, **kwargs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval,
                             "monitor": "val/loss"},
        }
