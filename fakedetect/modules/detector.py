"""The classifier LightningModule shared by every net that outputs one logit per image."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import OptimizerConfig, OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import (
    BinaryAccuracy,
)
from torchvision.transforms.v2.functional import horizontal_flip

from fakedetect.data.batch import Batch
from fakedetect.data.pixels import LUMA
from fakedetect.metrics.detection import UNCHECKED, detection_metrics
from fakedetect.metrics.thresholds import NAMED_THRESHOLDS, SelectedThresholds
from fakedetect.modules.checkpoint_format import FORMAT, FORMAT_KEY, STATISTICS, unusable, upgrade
from fakedetect.modules.finite import diverged
from fakedetect.modules.optimization import build_optimizer, build_scheduler
from fakedetect.nets.base import DetectorNet
from fakedetect.utils.choices import Choice
from fakedetect.utils.errors import ConfigError, NonFiniteError, is_int, is_number, require

log = logging.getLogger(__name__)


class TTA(Choice):
    """Test-time augmentations (`model.tta`; null is none)."""

    FLIP = "flip"  # P(FAKE) averaged over each image and its horizontal mirror


class Detector(L.LightningModule):
    """Trains `net` with `loss`; logs accuracy, precision, recall, F1 and AUROC per split, FAKE positive.

    `optimizer` and `scheduler` are factories (e.g. functools.partial) taking the parameters and the
    optimizer; a scheduler that accepts `total_steps` (OneCycleLR, say) is given the run's step count.
    The net's `param_groups()` (groups with an `lr_scale`, e.g. backbone and head) feed the optimizer, and
    its `load_pretrained()` runs when a fit starts from scratch (DetectorNet's interface).

    `threshold` is a number, or `youden` / `f1`: the Youden's J or best-F1 threshold found after every
    validation pass (kept in the `val_thresholds` buffer, so in checkpoints) decides test metrics and
    `decision_threshold`; validation and training accuracy stay at 0.5 then.

    The detector owns its preprocessing: batches arrive as uint8 images (or, from training's augmentation, floats
    in [0, 1]), and `preprocess` turns them into what the net takes with the training data's per-channel statistics
    (buffers `data_mean`, `data_std`, empty until `set_statistics`, which the data module calls when it fits a
    detector that has none; their length, 1 or 3, is the net's channel count), then resizes them on the device
    to `input_size` if given (32 px CIFAKE to an ImageNet net's 224, say: the decoded data and its cache stay
    small). A checkpoint's module thus scores raw images by itself: eval, predict and Grad-CAM need no data module.

    The test step scores the test split once, in Lightning's test loop (eval's report, robustness and Grad-CAM
    examples included, through `callbacks.test_scores.TestScores`); `predict_step` scores predict's raw batches
    through the same `preprocess` and `probabilities`.
    `tta` (test-time augmentation) applies there and to validation and test steps alike, so thresholds are
    fitted on the scores they decide; eval and predict may set another `tta` on a trained detector. Validation
    and test steps return those P(FAKE), for callbacks (`fakedetect.callbacks.figures` draws the figures).

    No NaN or infinity leaves the detector as a score: the logits of every scored batch are checked
    (`check_logits`), and statistics or checkpoints with unusable values are neither taken nor written
    (`checkpoint_format.unusable`).
    """

    # constructor arguments that are modules or factories, kept out of the saved hyperparameters
    not_hparams: tuple[str, ...] = ("net", "loss", "optimizer", "scheduler")
    # buffers (registered in __init__)
    val_thresholds: Tensor
    data_mean: Tensor
    data_std: Tensor
    luma: Tensor

    def __init__(
        self,
        net: DetectorNet,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        scheduler_interval: str = "epoch",
        threshold: float | str = 0.5,
        compile: bool = False,
        tta: str | None = None,
        input_size: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(net, DetectorNet):
            raise ConfigError(
                f"model.net must be a fakedetect.nets.DetectorNet (FlexibleCNN, MLP, Backbone, ...); "
                f"got {type(net).__module__}.{type(net).__name__}"
            )
        require(
            "model.threshold",
            threshold,
            threshold in NAMED_THRESHOLDS if isinstance(threshold, str) else is_number(threshold),
            "a number, or 'youden' or 'f1' (chosen on the validation split)",
        )
        require(
            "model.scheduler_interval",
            scheduler_interval,
            scheduler_interval in ("epoch", "step"),
            "epoch or step (when the LR scheduler steps)",
        )
        require(
            "model.input_size",
            input_size,
            input_size is None or (is_int(input_size) and input_size > 0),
            "a positive number of pixels, or null (as decoded)",
        )
        self.save_hyperparameters(logger=False, ignore=list(self.not_hparams))
        # where the weights were loaded from (`ckpt_path=...`), named when they score NaN; None while fitted
        self.origin: str | None = None
        self.input_size = input_size
        self.net, self.loss = net, loss
        self.tta = tta
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        fixed = 0.5 if isinstance(threshold, str) else float(threshold)
        self.train_acc = BinaryAccuracy(threshold=fixed, **UNCHECKED)
        self.val_metrics = detection_metrics(fixed, "val/")
        self.test_metrics = detection_metrics(fixed, "test/")
        self.val_acc_best = MaxMetric()
        self.means = nn.ModuleDict()  # log_mean's, by name
        self.val_scores = SelectedThresholds()
        self.register_buffer("val_thresholds", torch.full((len(NAMED_THRESHOLDS),), math.nan))
        for name in STATISTICS:
            self.register_buffer(name, torch.empty(0))
        # on the module's device with it, so greyscale costs no host-to-device copy per batch; not in checkpoints
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1), persistent=False)

    @property
    def tta(self) -> str | None:
        return self._tta

    @tta.setter
    def tta(self, value: str | None) -> None:
        if value is not None and value not in TTA.values():
            raise ConfigError(
                f"tta={value!r} (model.tta, or tta= of eval and predict): use flip (P(FAKE) averaged "
                "over each image and its horizontal mirror) or null (off)"
            )
        self._tta = value

    @property
    def threshold_name(self) -> str:
        """The selected threshold's name: youden, f1, or the configured number as text."""
        name = self.hparams["threshold"]
        return name if isinstance(name, str) else str(name)

    def thresholds(self) -> dict[str, float | None]:
        """Every threshold this detector knows by name: its fixed number (0.5 when it selects a fitted one),
        and Youden's and best F1's of its last validation (None before any)."""
        fixed = "0.5" if isinstance(self.hparams["threshold"], str) else self.threshold_name
        named = {
            n: None if math.isnan(t) else t for n, t in zip(NAMED_THRESHOLDS, self.val_thresholds.tolist(), strict=True)
        }
        return {fixed: float(fixed), **named}

    @property
    def decision_threshold(self) -> float:
        """FAKE when the probability exceeds this: the configured number, or the Youden / F1 one of validation."""
        name = self.hparams["threshold"]
        if not isinstance(name, str):
            return float(name)
        value = float(self.val_thresholds[NAMED_THRESHOLDS.index(name)])
        if math.isnan(value):
            raise ConfigError(
                f"threshold={name} is chosen on the validation split and no validation has run: "
                "fit first, use a checkpoint of a fitted run, or give a number"
            )
        return value

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def set_statistics(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """The per-channel mean and std of the training data, which `preprocess` normalizes with; a NaN, an infinity
        or a std not above 0 would make every input non-finite, and is refused."""
        statistics = dict(zip(STATISTICS, (mean, std), strict=True))
        values = {name: torch.tensor(v, dtype=torch.float32, device=self.device) for name, v in statistics.items()}
        bad = unusable(values)
        if bad:
            raise NonFiniteError(
                f"the normalization statistics mean={list(mean)} std={list(std)} are unusable ({', '.join(bad)}): "
                "every input would be NaN or infinite; data.normalize=false skips them"
            )
        self.data_mean, self.data_std = values[STATISTICS[0]], values[STATISTICS[1]]

    @property
    def has_statistics(self) -> bool:
        return bool(len(self.data_mean))

    def _statistics(self) -> tuple[Tensor, Tensor]:
        """(mean, std) shaped for NCHW batches; without them the detector refuses rather than guesses."""
        if not self.has_statistics:
            raise RuntimeError(
                f"{type(self).__name__} has no normalization statistics: fit or test it with "
                "ImageDataModule, or load it from a checkpoint"
            )
        return self.data_mean.view(1, -1, 1, 1), self.data_std.view(1, -1, 1, 1)

    def unnormalize(self, x: Tensor) -> Tensor:
        """A preprocessed batch brought back to [0, 1] images (an autoencoder's reconstruction target)."""
        mean, std = self._statistics()
        return (x * std.to(x.dtype) + mean.to(x.dtype)).clamp_(0, 1)

    @staticmethod
    def unit(images: Tensor) -> Tensor:
        """Images as floats in [0, 1]: uint8 ones scaled, float ones (augmented in training) as they are."""
        return images.float().div_(255) if images.dtype == torch.uint8 else images.float()

    @torch.no_grad()
    def preprocess(self, images: Tensor) -> Tensor:
        """A batch of raw NCHW images (uint8, or floats in [0, 1]) as the net takes it: greyscale when the statistics
        have one channel, normalized, resized to `input_size`, channels-last on a GPU."""
        mean, std = self._statistics()
        # in the statistics' dtype, which follows the model's: a `*-true` precision's half or bfloat16 weights
        x = self.unit(images.to(self.device, non_blocking=True)).to(mean.dtype)
        if mean.shape[1] == 1 and x.shape[1] == 3:
            x = (x * self.luma).sum(1, keepdim=True)
        x = (x - mean) / std
        if self.input_size and x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True)
        return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x

    def probabilities(self, logits: Tensor) -> Tensor:
        """P(FAKE) of the net's logits. Outside training (validation, test, predict: every score reported) the logits
        are checked first (`check_logits`): an infinite logit saturates P(FAKE) at exactly 0 or 1 and its loss."""
        if not self.training:
            self.check_logits(logits)
        return logits.detach().float().sigmoid()

    def predict_step(self, batch: Sequence[Tensor], batch_idx: int = 0) -> Tensor:
        """P(FAKE) of a batch `(raw images, ...)`, as the test step computes it."""
        x = self.preprocess(batch[0])
        return self.augmented(x, self.probabilities(self(x)))

    def augmented(self, x: Tensor, probs: Tensor) -> Tensor:
        """`probs` (of `x` as it is) merged with the test-time augmentation's: with flip, the mean of P(FAKE) of
        the image and of its mirror, which a detector of generated images should score alike."""
        if self.tta == TTA.FLIP:
            return (probs + self.probabilities(self(horizontal_flip(x)))) / 2
        return probs

    def check_logits(self, logits: Tensor) -> None:
        """A NonFiniteError when any logit is NaN or infinite (in any process): no metric, threshold, report or
        prediction is made of them. One host-device synchronization per scored batch, none per training step."""
        bad = int((~torch.isfinite(logits)).sum())
        if self._trainer is not None:  # every process stops together, rather than leave the others waiting
            stop = self.trainer.strategy.reduce_boolean_decision(bad > 0, all=False)
        else:
            stop = bad > 0
        if not stop:
            return
        found = f"{bad} of {len(logits)} images of a batch" if bad else "images of another process's batch"
        if self.origin is None and self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            raise diverged(self.trainer, f"after step {self.global_step} the logits are NaN or infinite for {found}")
        raise NonFiniteError(
            f"{self.origin or 'the trained detector'}: NaN or infinite logits for {found}, so nothing is scored: its "
            "weights or statistics make the net overflow (a diverged or altered checkpoint; with 16-bit precision, "
            "try 32-true)"
        )

    def setup(self, stage: str) -> None:
        if stage == "fit" and not self.trainer.ckpt_path:
            self.net.load_pretrained()
        if self.trainer.strategy.root_device.type == "cuda":
            self.net.to(memory_format=torch.channels_last)
        if self.hparams["compile"] and stage == "fit":
            self.net.compile()  # in place: the state dict keeps its keys, so checkpoints load uncompiled

    def _step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(loss, P(FAKE)) of the preprocessed images `x` with labels `y`."""
        logits = self(x)
        return self.loss(logits, y), self.probabilities(logits)

    def log_mean(self, name: str, value: Tensor, n: int, prog_bar: bool = False) -> None:
        """Log the epoch's mean of a batch mean `value` (over `n` images) per image, over every process.

        A torchmetrics MeanMetric (float sums, added up across processes), not `self.log(sync_dist=True)`: that
        averages each process's image count as an integer tensor, which gloo truncates (101 images on 2
        processes count as 100)."""
        key = name.replace("/", "__")  # a module name holds no '/' or '.'
        if key not in self.means:
            self.means[key] = MeanMetric().to(self.device)
        mean = cast(MeanMetric, self.means[key])
        mean.update(value.detach(), weight=n)
        self.log(name, mean, on_step=False, on_epoch=True, prog_bar=prog_bar, metric_attribute=f"means.{key}")

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        y = batch.labels
        loss, probs = self._step(self.preprocess(batch.images), y)
        self.train_acc.update(probs, y)  # not a call: that also computes a per-batch value nobody reads
        self.log_mean("train/loss", loss, len(y), prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def on_train_start(self) -> None:
        self.val_acc_best.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x, y = self.preprocess(batch.images), batch.labels
        loss, probs = self._step(x, y)
        probs = self.augmented(x, probs)
        self.val_metrics.update(probs, y)
        self.val_scores.update(probs, y)
        self.log_mean("val/loss", loss, len(y), prog_bar=True)
        return probs

    def on_validation_epoch_end(self) -> None:
        # computed values are already reduced across ranks by torchmetrics; sync_dist averages equal values
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log_dict(values, prog_bar=False, sync_dist=True)
        self.val_acc_best(values["val/acc"])
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)
        self.val_thresholds.copy_(self.val_scores.compute())
        self.val_scores.reset()
        self.log_dict(
            {f"val/threshold_{n}": t for n, t in zip(NAMED_THRESHOLDS, self.val_thresholds, strict=True)},
            sync_dist=True,
        )

    def on_test_start(self) -> None:
        threshold = self.decision_threshold
        for metric in self.test_metrics.values():
            if hasattr(metric, "threshold"):  # AUROC has none
                metric.threshold = threshold

    def test_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x, y = self.preprocess(batch.images), batch.labels
        loss, probs = self._step(x, y)
        probs = self.augmented(x, probs)
        self.test_metrics.update(probs, y)
        self.log_mean("test/loss", loss, len(y))
        return probs

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute(), sync_dist=True)
        self.log("test/threshold", self.decision_threshold, sync_dist=True)
        self.test_metrics.reset()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The format version, and the thresholds as plain numbers too, for readers of the file (None before any
        validation). Weights or statistics holding NaN or infinity are never written (as the loader refuses them)."""
        bad = unusable(checkpoint["state_dict"])
        if bad:
            raise diverged(self.trainer, f"the weights to save after step {self.global_step} are unusable ({bad[0]})")
        checkpoint[FORMAT_KEY] = FORMAT
        thresholds = self.thresholds()
        checkpoint["thresholds"] = {
            **thresholds,
            "selected": self.threshold_name,
            "value": thresholds[self.threshold_name],
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """An older checkpoint is brought up to date first; the statistics buffers take the checkpoint's shape (1 or
        3 channels)."""
        state = upgrade(checkpoint)["state_dict"]
        for name in STATISTICS:
            if isinstance(state.get(name), Tensor):
                setattr(self, name, torch.empty_like(state[name], device=self.device))

    def build_optimizer(self) -> tuple[torch.optim.Optimizer, list[float]]:
        return build_optimizer(self.optimizer_factory, self.net.param_groups())

    def build_scheduler(
        self, optimizer: torch.optim.Optimizer, scales: list[float], total_steps: Callable[[], int]
    ) -> torch.optim.lr_scheduler.LRScheduler | None:
        return build_scheduler(self.scheduler_factory, optimizer, scales, total_steps)

    def configure_optimizers(self) -> OptimizerConfig | OptimizerLRSchedulerConfig:
        optimizer, scales = self.build_optimizer()
        scheduler = self.build_scheduler(optimizer, scales, lambda: int(self.trainer.estimated_stepping_batches))
        if scheduler is None:
            return {"optimizer": optimizer}
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": self.hparams["scheduler_interval"],
                "monitor": "val/loss",
            },
        }
