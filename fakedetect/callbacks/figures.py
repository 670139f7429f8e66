"""TensorBoard figures and image grids of a run, as Lightning callbacks: the LightningModules draw nothing.

Both read what a Detector's validation and test steps return, P(FAKE) of the batch, and the batch itself; the
class names come from the data module when it has them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchmetrics.classification import BinaryConfusionMatrix, BinaryROC
from torchvision.utils import make_grid

from fakedetect.data.batch import Batch
from fakedetect.metrics.thresholds import decide
from fakedetect.modules.detector import Detector
from fakedetect.reporting.figures import log_figure, log_image, metric_figure, new_figure

# names of label 0 and 1 when the data module gives none
DEFAULT_CLASSES = ("0", "1")
# what a Lightning hook receives as a step's output
StepOutput = Tensor | Mapping[str, Any] | None


def class_names(trainer: L.Trainer) -> list[str]:
    classes = getattr(getattr(trainer, "datamodule", None), "classes", None)
    return list(classes) if classes else list(DEFAULT_CLASSES)


def detector(pl_module: L.LightningModule) -> Detector:
    if not isinstance(pl_module, Detector):
        raise TypeError(f"the figure callbacks draw a fakedetect Detector's outputs, not a {type(pl_module).__name__}")
    return pl_module


def probabilities(outputs: StepOutput) -> Tensor:
    """P(FAKE) of the batch: what Detector's validation and test steps return."""
    if not isinstance(outputs, Tensor):
        raise TypeError(f"the figure callbacks need a step that returns P(FAKE) as a tensor, got {type(outputs)}")
    return outputs


class TestFigures(L.Callback):
    """The test split's confusion matrix (at the module's decision threshold) and ROC curve: `test/confusion_matrix`
    and `test/roc`."""

    def __init__(self) -> None:
        self.confusion = BinaryConfusionMatrix()
        self.roc = BinaryROC()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.confusion = BinaryConfusionMatrix(threshold=detector(pl_module).decision_threshold).to(pl_module.device)
        self.roc = BinaryROC().to(pl_module.device)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: StepOutput,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.confusion.update(probabilities(outputs), batch[1])
        self.roc.update(probabilities(outputs), batch[1])

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = pl_module.global_step
        log_figure(
            pl_module.loggers, "test/confusion_matrix", metric_figure(self.confusion, labels=class_names(trainer)), step
        )
        log_figure(pl_module.loggers, "test/roc", metric_figure(self.roc, score=True), step)
        self.confusion.reset()
        self.roc.reset()


class Reconstructions(L.Callback):
    """For a net with `autoencode` (the autoencoders; other nets are left alone): the first `n_images` of every
    validation and of the test, originals over reconstructions (`val/reconstructions`, `test/reconstructions`),
    and the first `n_images` misclassified test images with their reconstruction and confidence
    (`test/misclassified`)."""

    def __init__(self, n_images: int = 8) -> None:
        self.n_images = n_images
        self._threshold = 0.5
        self._mistakes: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []

    @staticmethod
    def _autoencode(pl_module: L.LightningModule) -> Callable[[Tensor], tuple[Tensor, Tensor]] | None:
        return getattr(detector(pl_module).net, "autoencode", None)

    @torch.no_grad()
    def _pairs(self, pl_module: L.LightningModule, images: Tensor) -> tuple[Tensor, Tensor]:
        """The raw batch `images` as the net sees them (in [0, 1], greyscale for a greyscale net), and the net's
        reconstructions of them, on the CPU."""
        autoencode = self._autoencode(pl_module)
        assert autoencode is not None  # the hooks below return early without one
        model = detector(pl_module)
        x = model.preprocess(images)
        _, reconstruction = autoencode(x)
        return model.unnormalize(x).cpu(), reconstruction.float().cpu()

    def _grid(self, pl_module: L.LightningModule, stage: str, images: Tensor) -> None:
        """Originals (top row) over their reconstructions (bottom row)."""
        images, reconstructions = self._pairs(pl_module, images[: self.n_images])
        grid = make_grid(torch.cat([images, reconstructions]), nrow=len(images), pad_value=1.0)
        log_image(pl_module.loggers, f"{stage}/reconstructions", grid, pl_module.global_step)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: StepOutput,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx == 0 and not trainer.sanity_checking and self._autoencode(pl_module) is not None:
            self._grid(pl_module, "val", batch.images)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._threshold = detector(pl_module).decision_threshold
        self._mistakes = []

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: StepOutput,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._autoencode(pl_module) is None:
            return
        images, labels = batch.images, batch.labels
        if batch_idx == 0:
            self._grid(pl_module, "test", images)
        room = self.n_images - sum(len(m[0]) for m in self._mistakes)
        if room > 0:
            probs = probabilities(outputs)
            wrong = (decide(probs, self._threshold) != labels).nonzero().squeeze(1)[:room]
            if len(wrong):
                self._mistakes.append((*self._pairs(pl_module, images[wrong]), labels[wrong].cpu(), probs[wrong].cpu()))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._mistakes:
            images, reconstructions, labels, probs = (torch.cat(t) for t in zip(*self._mistakes, strict=True))
            self._mistakes = []
            fig = reconstruction_mistakes_figure(
                images, reconstructions, labels, probs, self._threshold, class_names(trainer)
            )
            log_figure(pl_module.loggers, "test/misclassified", fig, pl_module.global_step)


def reconstruction_mistakes_figure(
    images: Tensor, reconstructions: Tensor, labels: Tensor, probs: Tensor, threshold: float, classes: Sequence[str]
) -> Figure:
    """Misclassified images over their reconstructions, titled as in the write-up: actual class, predicted
    class and the confidence of that prediction."""
    n = len(images)
    predictions = decide(probs, threshold).tolist()
    fig = new_figure(figsize=(1.7 * n, 4.2))
    axes = fig.subplots(2, n, squeeze=False)
    for i, predicted in enumerate(predictions):
        confidence = float(probs[i] if predicted else 1 - probs[i])
        axes[0, i].set_title(
            f"Actual: {classes[int(labels[i])]}\nPred: {classes[predicted]}\nConf: {confidence:.2f}", fontsize=8
        )
        for row, image in enumerate((images[i], reconstructions[i])):
            axes[row, i].imshow(image.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
            axes[row, i].axis("off")
    fig.suptitle("Misclassified test images (top) and their reconstructions (bottom)", fontsize=9)
    fig.tight_layout()
    return fig
