"""The one scorer: P(FAKE) of a trained detector over any iterable of (uint8 NCHW, labels) batches.

eval, its report and robustness table, Grad-CAM, predict and the bench all score through `score`, which runs
the Detector's own `predict_step` on batches preprocessed as in testing, so a split scored here gives the
probabilities of the test step bit for bit (same batches, same precision context).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor

from fakedetect.modules.detector import Detector

Batches = Iterable[tuple[Tensor, Tensor]]
# `tta=checkpoint` (eval's and predict's default) keeps the test-time augmentation the detector was trained with
CHECKPOINT_TTA = "checkpoint"


def choose_tta(model: Detector, tta: str | None) -> None:
    """Give a trained detector the test-time augmentation asked for on the command line (flip, null), or keep its
    own; every score of it, test metrics included, then uses that one."""
    if tta != CHECKPOINT_TTA:
        model.tta = tta


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
) -> tuple[Tensor, Tensor]:
    """(P(FAKE) float32, labels) on the CPU for every image of `batches`, in order.

    - `transform` changes each uint8 batch before preprocessing (a degradation, for the robustness table).
    - `keep(images, probs, labels)` sees every scored batch on the CPU, so a caller can hold the few images it
      shows (the most confident mistakes, Grad-CAM examples) without holding the split.
    - `limit` stops after that many images; `context` is the precision context of the forward pass (a
      Trainer's `precision_plugin.forward_context`, to match its test step).
    The model is scored in eval mode and left in the mode it came in.
    """
    training = model.training
    model.eval().to(device)
    probs: list[Tensor] = []
    labels: list[Tensor] = []
    seen = 0
    try:
        for images, y in batches:
            if limit is not None:
                if seen >= limit:
                    break
                images, y = images[: limit - seen], y[: limit - seen]
            if transform is not None:
                images = transform(images)
            with context():
                p = model.predict_step((preprocess(images.to(device, non_blocking=True)),)).cpu()
            probs.append(p)
            labels.append(y.cpu())
            if keep is not None:
                keep(images.cpu(), p, labels[-1])
            seen += len(y)
    finally:
        model.train(training)
    if not probs:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(probs), torch.cat(labels)
