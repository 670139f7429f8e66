"""The autoencoder detectors' LightningModule: Detector's metrics and thresholds, plus a reconstruction loss."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torchvision.utils import make_grid

from fakedetect.losses.schedule import LossSchedule
from fakedetect.metrics.thresholds import decide
from fakedetect.modules.detector import Detector
from fakedetect.reporting.figures import log_figure


class AutoencoderDetector(Detector):
    """Trains a net with `autoencode(x) -> (logits, reconstruction)` on
    r_weight * reconstruction(reconstruction, image) + c_weight * loss(logits, labels).

    - `loss` is any classification loss of the `loss=` group; `reconstruction` takes [0, 1] images (MSE,
      HybridLoss). Its `load_pretrained()`, if any (LPIPS), runs when a fit starts from scratch.
    - The weights follow a LossSchedule over training steps: classification frozen for the first `c_freeze`
      of training, then ramped in over `c_ramp`. Validation and test losses use the full weights, so they
      compare across epochs.
    - Batches arrive normalized; the target is the batch brought back to [0, 1] with the data module's mean
      and std (taken as already in [0, 1] when there is no data module with statistics).
    - TensorBoard gets `n_images` originals over their reconstructions after every validation and after
      testing, and the misclassified test images with their reconstruction and confidence.
    """

    not_hparams = (*Detector.not_hparams, "reconstruction")

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        reconstruction: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        scheduler_interval: str = "epoch",
        threshold: float | str = 0.5,
        compile: bool = False,
        r_weight: float = 1.0,
        c_weight: float = 1.0,
        c_freeze: float = 0.1,
        c_ramp: float = 0.0,
        n_images: int = 8,
        tta: str | None = None,
    ) -> None:
        super().__init__(net, loss, optimizer, scheduler, scheduler_interval, threshold, compile, tta)
        self.reconstruction = reconstruction
        self.schedule = LossSchedule(r_weight, c_weight, c_freeze, c_ramp)
        self.n_images = n_images
        self._total_steps = math.inf
        self._test_threshold = 0.5
        self._examples: dict[str, tuple[Tensor, Tensor]] = {}
        self._mistakes: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and not self.trainer.ckpt_path and hasattr(self.reconstruction, "load_pretrained"):
            self.reconstruction.load_pretrained()

    def on_train_start(self) -> None:
        super().on_train_start()
        self._total_steps = self.trainer.estimated_stepping_batches

    def loss_weights(self, stage: str) -> tuple[float, float]:
        """(reconstruction, classification) weights: scheduled in training, full otherwise."""
        if stage != "train":
            return self.schedule.r_weight, self.schedule.c_weight
        # a run of unknown length (max_epochs=-1, no max_steps) has no fraction done: full weights
        progress = self.global_step / self._total_steps if math.isfinite(self._total_steps) else 1.0
        return self.schedule(progress)

    def _step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch
        stage = "train" if self.trainer.training else "test" if self.trainer.testing else "val"
        logits, reconstruction = self.net.autoencode(x)
        images = self._unnormalize(x)
        recon_loss, class_loss = self.reconstruction(reconstruction, images), self.loss(logits, y)
        r_weight, c_weight = self.loss_weights(stage)
        self.log_dict({f"{stage}/recon_loss": recon_loss, f"{stage}/class_loss": class_loss}, on_epoch=True,
                      on_step=False, sync_dist=True)
        if stage == "train":
            self.log("train/c_weight", c_weight, on_epoch=True, on_step=False, sync_dist=True)
        probs = self.probabilities(logits)
        self._keep(stage, images, reconstruction.detach(), probs, y)
        return r_weight * recon_loss + c_weight * class_loss, probs, y

    def _unnormalize(self, x: Tensor) -> Tensor:
        datamodule = self.trainer.datamodule
        mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        if mean is None or std is None:
            return x
        return (x * x.new_tensor(std).view(1, -1, 1, 1) + x.new_tensor(mean).view(1, -1, 1, 1)).clamp_(0, 1)

    def _keep(self, stage: str, images: Tensor, reconstruction: Tensor, probs: Tensor, labels: Tensor) -> None:
        """The first batch's images of each evaluation, and the first misclassified test images."""
        if stage == "train" or self.trainer.sanity_checking:
            return
        if stage not in self._examples:
            self._examples[stage] = (images[: self.n_images].cpu(), reconstruction[: self.n_images].float().cpu())
        room = self.n_images - sum(len(m[0]) for m in self._mistakes)
        if stage == "test" and room > 0:
            wrong = (decide(probs, self._test_threshold) != labels).nonzero().squeeze(1)[:room]
            if len(wrong):
                self._mistakes.append((images[wrong].cpu(), reconstruction[wrong].float().cpu(), labels[wrong].cpu(),
                                       probs[wrong].cpu()))

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_reconstructions("val")

    def on_test_start(self) -> None:
        super().on_test_start()
        self._test_threshold = self.decision_threshold
        self._mistakes = []

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_reconstructions("test")
        if self._mistakes:
            images, reconstructions, labels, probs = (torch.cat(t) for t in zip(*self._mistakes, strict=True))
            self._mistakes = []
            classes = self.class_names() or ["0", "1"]
            fig = mistakes_figure(images, reconstructions, labels, probs, self._test_threshold, classes)
            log_figure(self.loggers, "test/misclassified", fig, self.global_step)

    def _log_reconstructions(self, stage: str) -> None:
        """Originals (top row) over their reconstructions (bottom row), to every TensorBoard-like logger."""
        if stage not in self._examples:
            return
        images, reconstructions = self._examples.pop(stage)
        grid = make_grid(torch.cat([images, reconstructions]), nrow=len(images), pad_value=1.0)
        for logger in self.loggers:
            if hasattr(getattr(logger, "experiment", None), "add_image"):
                logger.experiment.add_image(f"{stage}/reconstructions", grid, self.global_step)


def mistakes_figure(
    images: Tensor, reconstructions: Tensor, labels: Tensor, probs: Tensor, threshold: float, classes: Sequence[str]
) -> Figure:
    """Misclassified images over their reconstructions, titled as in the write-up: actual class, predicted
    class and the confidence of that prediction."""
    n = len(images)
    predictions = decide(probs, threshold).tolist()
    fig, axes = plt.subplots(2, n, figsize=(1.7 * n, 4.2), squeeze=False)
    for i, predicted in enumerate(predictions):
        confidence = float(probs[i] if predicted else 1 - probs[i])
        axes[0, i].set_title(f"Actual: {classes[int(labels[i])]}\nPred: {classes[predicted]}\nConf: {confidence:.2f}",
                             fontsize=8)
        for row, image in enumerate((images[i], reconstructions[i])):
            axes[row, i].imshow(image.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
            axes[row, i].axis("off")
    fig.suptitle("Misclassified test images (top) and their reconstructions (bottom)", fontsize=9)
    fig.tight_layout()
    return fig
