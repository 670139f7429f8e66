"""The bench's timers (fakedetect/benchmarks/throughput.py): wall time of the timed training steps, and the test
accuracy after every epoch against the training time so far."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import lightning as L
import torch
from torchmetrics.functional.classification import binary_accuracy

from fakedetect.data.datamodule import ImageDataModule
from fakedetect.metrics.thresholds import decide
from fakedetect.modules.detector import Detector

log = logging.getLogger(__name__)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it times what ran."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(L.Callback):
    """Wall time from the start of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.warmup:
            sync(trainer.strategy.root_device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sync(trainer.strategy.root_device)
        self.end = time.perf_counter()


class EpochTester(L.Callback):
    """Test accuracy after every training epoch, against the training time so far (testing is not timed)."""

    def __init__(self, targets: list[float]) -> None:
        self.targets, self.train_s, self.start = sorted(targets), 0.0, 0.0
        self.curve: list[dict[str, float]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sync(trainer.strategy.root_device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sync(trainer.strategy.root_device)
        self.train_s += time.perf_counter() - self.start
        datamodule = getattr(trainer, "datamodule", None)  # Lightning sets it when fit is given one
        if not isinstance(datamodule, ImageDataModule) or not isinstance(pl_module, Detector):
            raise TypeError("EpochTester tests a Detector fitted on an ImageDataModule")
        acc = test_accuracy(pl_module, datamodule, trainer.precision_plugin.forward_context)
        self.curve.append({"epoch": trainer.current_epoch + 1, "train_s": self.train_s, "test_acc": acc})
        log.info("epoch %d: %.1f s of training, test acc %.4f", trainer.current_epoch + 1, self.train_s, acc)
        trainer.should_stop = acc >= self.targets[-1]

    def reached(self) -> dict[str, float | None]:
        """Training seconds to the first epoch at or above each target; None if never reached."""
        return {f"{t:.3f}": next((p["train_s"] for p in self.curve if p["test_acc"] >= t), None) for t in self.targets}


@torch.no_grad()
def test_accuracy(model: Detector, datamodule: ImageDataModule, context: Callable[[], AbstractContextManager]) -> float:
    """Test accuracy in the middle of `fit`, where Lightning's test loop cannot run: the detector's own predict step
    over the test batches (the memory loader keeps them on the device after the first epoch), in eval mode."""
    model.eval()
    probs, labels = [], []
    with context():
        for batch in datamodule.test_dataloader():
            probs.append(model.predict_step(batch).cpu())
            labels.append(batch[1].cpu())
    model.train()
    return float(binary_accuracy(decide(torch.cat(probs), model.decision_threshold), torch.cat(labels)))
