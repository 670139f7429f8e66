"""The one scorer: P(FAKE) of a trained detector over any iterable of (uint8 NCHW, labels, sources) batches.

eval, its report and robustness table, Grad-CAM, predict and the bench all score through `score`, which runs
the Detector's own `predict_step` on batches preprocessed as in testing, so a split scored here gives the
probabilities of the test step bit for bit (same batches, same precision context).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple

import lightning as L
import torch
from torch import Tensor

from fakedetect.data.datamodule import ImageDataModule
from fakedetect.modules.detector import Detector

# (images, labels, sources) as every data loader yields them; (images, labels) batches (predict's files) score too
Batches = Iterable[tuple[Tensor, Tensor, Tensor] | tuple[Tensor, Tensor]]
# the source index of an image from a batch that carries none
NO_SOURCE = -1
# `tta=checkpoint` (eval's and predict's default) keeps the test-time augmentation the detector was trained with
CHECKPOINT_TTA = "checkpoint"


def choose_tta(model: Detector, tta: str | None) -> None:
    """Give a trained detector the test-time augmentation asked for on the command line (flip, null), or keep its
    own; every score of it, test metrics included, then uses that one."""
    if tta != CHECKPOINT_TTA:
        model.tta = tta


class Scores(NamedTuple):
    """Per image, in loader order: P(FAKE) float32, label int64 and source index int64 (into the data module's
    `source_names`; NO_SOURCE where the batches carried none)."""

    probs: Tensor
    labels: Tensor
    sources: Tensor


@torch.no_grad()
def score(
    model: Detector,
    batches: Batches,
    preprocess: Callable[[Tensor], Tensor],
    device: torch.device | str = "cpu",
    *,
    transform: Callable[[Tensor], Tensor] | None = None,
    limit: int | None = None,
    keep: Callable[[Tensor, Tensor, Tensor], None] | None = None,
    context: Callable[[], AbstractContextManager] = nullcontext,
) -> Scores:
    """P(FAKE), labels and sources on the CPU for every image of `batches`, in order.

    - `transform` changes each uint8 batch before preprocessing (a degradation, for the robustness table).
    - `keep(images, probs, labels)` sees every scored batch (its images where the loader left them, on the device
      for the memory loader; probs and labels on the CPU), so a caller copies to the CPU only the few images it
      shows (the most confident mistakes, Grad-CAM examples), never the split.
    - `limit` stops after that many images; `context` is the precision context of the forward pass (a
      Trainer's `precision_plugin.forward_context`, to match its test step).
    The model is scored in eval mode and left in the mode it came in.
    """
    training = model.training
    model.eval().to(device)
    probs: list[Tensor] = []
    labels: list[Tensor] = []
    sources: list[Tensor] = []
    seen = 0
    try:
        for batch in batches:
            images, y = batch[0], batch[1]
            s = batch[2] if len(batch) > 2 else torch.full_like(y, NO_SOURCE)
            if limit is not None:
                if seen >= limit:
                    break
                images, y, s = images[: limit - seen], y[: limit - seen], s[: limit - seen]
            if transform is not None:
                images = transform(images)
            with context():
                p = model.predict_step((preprocess(images.to(device, non_blocking=True)),)).cpu()
            probs.append(p)
            labels.append(y.cpu())
            sources.append(s.cpu())
            if keep is not None:
                keep(images, p, labels[-1])
            seen += len(y)
    finally:
        model.train(training)
    if not probs:
        return Scores(torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))
    return Scores(torch.cat(probs), torch.cat(labels), torch.cat(sources))


def split_scores(
    model: Detector, datamodule: ImageDataModule, trainer: L.Trainer, split: str = "test", **kwargs: Any
) -> Scores:
    """A split (val or test) scored as the trainer's test step scores it: its own loader, device and precision."""
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    return score(
        model,
        loader,
        datamodule.preprocess,
        trainer.strategy.root_device,
        context=trainer.precision_plugin.forward_context,
        **kwargs,
    )


def tested_images(trainer: L.Trainer, datamodule: ImageDataModule) -> int:
    """How many test images the last `trainer.test` saw on every process (all of them unless limit_test_batches
    cut it short): the prefix of the test split that reports scored after it must cover."""
    batches = sum(trainer.num_test_batches)
    if not math.isfinite(batches):  # Lightning's count for a loader without a length
        raise RuntimeError("the test loader has no length, so the images the test saw cannot be counted")
    return int(batches) * datamodule.eval_batch_size * trainer.world_size


def tested_scores(model: Detector, datamodule: ImageDataModule, trainer: L.Trainer, **kwargs: Any) -> Scores:
    """The images the last `trainer.test` saw, scored as its test step scored them: what a report, per-source table
    or robustness row made after testing covers, so that each agrees with test/acc."""
    return split_scores(model, datamodule, trainer, "test", limit=tested_images(trainer, datamodule), **kwargs)
