"""The autoencoder detectors' LightningModule: Detector's metrics and thresholds, plus a reconstruction loss."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from fakedetect.losses.schedule import LossSchedule
from fakedetect.modules.detector import Detector
from fakedetect.nets.autoencoder import ConvAutoencoder, TransferAutoencoder


class AutoencoderDetector(Detector):
    """Trains a net with `autoencode(x) -> (logits, reconstruction)` on
    r_weight * reconstruction(reconstruction, image) + c_weight * loss(logits, labels).

    - `loss` is any classification loss of the `loss=` group; `reconstruction` takes [0, 1] images (MSE,
      HybridLoss). Its `load_pretrained()`, if any (LPIPS), runs when a fit starts from scratch.
    - The weights follow a LossSchedule over training steps: classification frozen for the first `c_freeze`
      of training, then ramped in over `c_ramp`. Validation and test losses use the full weights, so they
      compare across epochs.
    - The target is the preprocessed batch brought back to [0, 1] with the module's own normalization statistics
      (Detector's buffers): greyscale for a greyscale detector.
    - `detector_args` are Detector's (scheduler, threshold, tta, ...). The reconstruction grids and misclassified
      images in TensorBoard are `fakedetect.callbacks.figures.Reconstructions`'.
    """

    not_hparams = (*Detector.not_hparams, "reconstruction")
    net: ConvAutoencoder | TransferAutoencoder  # the nets with `autoencode`

    def __init__(
        self,
        net: ConvAutoencoder | TransferAutoencoder,
        loss: nn.Module,
        reconstruction: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        r_weight: float = 1.0,
        c_weight: float = 1.0,
        c_freeze: float = 0.1,
        c_ramp: float = 0.0,
        **detector_args: Any,
    ) -> None:
        super().__init__(net, loss, optimizer, **detector_args)
        self.reconstruction = reconstruction
        self.schedule = LossSchedule(r_weight, c_weight, c_freeze, c_ramp)
        self._total_steps = math.inf

    def setup(self, stage: str) -> None:
        super().setup(stage)
        load_pretrained = getattr(self.reconstruction, "load_pretrained", None)  # LPIPS's, say
        if stage == "fit" and not self.trainer.ckpt_path and load_pretrained is not None:
            load_pretrained()

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

    def _step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        stage = "train" if self.trainer.training else "test" if self.trainer.testing else "val"
        logits, reconstruction = self.net.autoencode(x)
        recon_loss, class_loss = self.reconstruction(reconstruction, self.unnormalize(x)), self.loss(logits, y)
        r_weight, c_weight = self.loss_weights(stage)
        self.log_mean(f"{stage}/recon_loss", recon_loss, len(y))
        self.log_mean(f"{stage}/class_loss", class_loss, len(y))
        if stage == "train":
            self.log_mean("train/c_weight", torch.as_tensor(c_weight, device=self.device), len(y))
        return r_weight * recon_loss + c_weight * class_loss, self.probabilities(logits)
