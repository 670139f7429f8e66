"""Grad-CAM (pytorch-grad-cam) on test images: where a detector looks, on hits and misses of both classes."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from torch import Tensor, nn

from fakedetect.callbacks.test_scores import TestScores
from fakedetect.data.datamodule import ImageDataModule
from fakedetect.metrics.thresholds import decide
from fakedetect.modules.detector import Detector
from fakedetect.nets.base import DetectorNet
from fakedetect.reporting.figures import new_figure
from fakedetect.utils.device import device_trainer
from fakedetect.utils.errors import ConfigError

MIN_CAM_SIZE = 4


def explainable_layers(net: DetectorNet) -> list[nn.Module]:
    """The net's `cam_layers`; a net without any (an MLP) is a one-line refusal, before anything is scored."""
    candidates = net.cam_layers()
    if not candidates:
        raise ConfigError(
            f"Grad-CAM needs spatial feature maps and {type(net).__name__} has none (it sees "
            "flattened pixels): explain a convolutional model (cnn, resnet18, timm, autoencoder, "
            "ae_transfer)"
        )
    return candidates


def cam_layer(net: DetectorNet, inputs: Tensor) -> nn.Module:
    """The deepest of the net's `cam_layers` whose output is still at least MIN_CAM_SIZE pixels wide for these
    inputs: ResNet-18's layer4 is 1x1 on 32 px images, and a map of one pixel says nothing about where the net
    looks."""
    candidates = explainable_layers(net)
    widths: dict[int, int] = {}

    def record(module: nn.Module, _: tuple, out: Tensor) -> None:
        widths[id(module)] = out.shape[-1]

    hooks = [m.register_forward_hook(record) for m in candidates]
    with torch.no_grad():
        net(inputs[:1])
    for hook in hooks:
        hook.remove()
    ran = [m for m in candidates if id(m) in widths]
    if not ran:
        raise RuntimeError(f"none of {type(net).__name__}'s cam_layers ran in its forward")
    return next((m for m in reversed(ran) if widths[id(m)] >= MIN_CAM_SIZE), ran[0])


def buckets(labels: Tensor, probs: Tensor, threshold: float) -> Tensor:
    """0 correct negative, 1 correct positive, 2 misclassified negative, 3 misclassified positive."""
    wrong = (decide(probs, threshold) != labels).long()
    return 2 * wrong + labels.long()


def pick_examples(labels: Tensor, probs: Tensor, threshold: float, n: int) -> Tensor:
    """Up to n indices, shared as evenly as there are images among the four buckets, grouped in their order."""
    groups = buckets(labels, probs, threshold)
    members = [torch.nonzero(groups == b).squeeze(1) for b in range(4)]
    take = [0] * len(members)
    while sum(take) < n and any(t < len(b) for t, b in zip(take, members, strict=True)):
        for k, bucket in enumerate(members):
            if take[k] < len(bucket) and sum(take) < n:
                take[k] += 1
    return torch.cat([b[:t] for b, t in zip(members, take, strict=True)])


class FirstOfEachBucket:
    """The first n scored images of each bucket (all that `pick_examples` can choose) among the first `pool`
    scored, kept while scoring (a `keep` of TestScores)."""

    def __init__(self, threshold: float, n: int, pool: int) -> None:
        self.threshold, self.n, self.room = threshold, n, pool
        self.images: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.probs: list[Tensor] = []
        self.counts = torch.zeros(4, dtype=torch.long)

    def __call__(self, images: Tensor, probs: Tensor, labels: Tensor) -> None:
        images, probs, labels = images[: self.room], probs[: self.room], labels[: self.room]
        self.room -= len(labels)
        groups = buckets(labels, probs, self.threshold)
        keep = torch.zeros(len(labels), dtype=torch.bool)
        for b in range(4):
            idx = torch.nonzero(groups == b).squeeze(1)[: max(self.n - int(self.counts[b]), 0)]
            keep[idx] = True
            self.counts[b] += len(idx)
        self.images.append(images[keep.to(images.device)].cpu())
        self.labels.append(labels[keep])
        self.probs.append(probs[keep])


def gradcam_maps(net: nn.Module, layer: nn.Module, inputs: Tensor, targets: list[int]) -> np.ndarray:
    """(N, H, W) maps in [0, 1] at the input's size, for class `targets[i]` (1 = FAKE) of image i."""
    # The input requires grad so that gradients reach the CAM layer even through frozen stages.
    inputs = inputs.detach().clone().requires_grad_(True)
    with GradCAM(model=net, target_layers=[layer]) as cam:
        return cam(input_tensor=inputs, targets=[BinaryClassifierOutputTarget(t) for t in targets])


def gradcam_figure(
    images: Tensor,
    maps: np.ndarray,
    labels: Tensor,
    probs: Tensor,
    threshold: float,
    classes: list[str],
    layer_name: str,
    cols: int = 4,
) -> Figure:
    """Image and overlay side by side; titles give the true class and P(FAKE), green if right, red if wrong."""
    rows = math.ceil(len(images) / cols)
    fig = new_figure(figsize=(4 * cols, 2.3 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, 2 * cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    predictions = decide(probs, threshold)
    for k, (image, cam, label, prob, predicted) in enumerate(
        zip(images, maps, labels, probs, predictions, strict=True)
    ):
        rgb = image.permute(1, 2, 0).numpy().astype(np.float32) / 255
        right = int(predicted) == int(label)
        left, over = axes[k // cols, 2 * (k % cols)], axes[k // cols, 2 * (k % cols) + 1]
        left.imshow(rgb, interpolation="nearest")
        left.set_title(f"{classes[int(label)]} p={prob:.2f}", color="green" if right else "red", fontsize=9)
        over.imshow(show_cam_on_image(rgb, cam, use_rgb=True), interpolation="nearest")
        over.set_title("correct" if right else "misclassified", color="green" if right else "red", fontsize=9)
    fig.suptitle(
        f"Grad-CAM at {layer_name} for the predicted class; titles: true class, p = P({classes[1]}), "
        f"threshold {threshold}"
    )
    return fig


def explain_test_images(
    model: Detector,
    datamodule: ImageDataModule,
    threshold: float,
    n: int = 16,
    pool: int = 1000,
    device: str = "cpu",
) -> Figure:
    """Score the first `pool` test images in a test pass, pick n hits and misses of both classes, return their
    Grad-CAM grid."""
    explainable_layers(model.net)
    kept = FirstOfEachBucket(threshold, n, pool)
    trainer = device_trainer(
        device, callbacks=[TestScores(keep=kept)], limit_test_batches=math.ceil(pool / datamodule.eval_batch_size)
    )
    trainer.test(model, datamodule=datamodule, verbose=False)
    if not kept.images:
        raise ConfigError("no test images to explain: the test split is empty (data.root, data.test_limit)")
    images, labels, probs = torch.cat(kept.images), torch.cat(kept.labels), torch.cat(kept.probs)
    picked = pick_examples(labels, probs, threshold, n)
    net = model.net.eval()
    inputs = model.preprocess(images[picked])
    layer = cam_layer(net, inputs)
    maps = gradcam_maps(net, layer, inputs, decide(probs[picked], threshold).tolist())
    if maps.shape[-2:] != images.shape[-2:]:  # the detector resized its input (model.input_size): back to the image
        maps = F.interpolate(torch.from_numpy(maps)[:, None], size=images.shape[-2:], mode="bilinear")[:, 0].numpy()
    name = next(n for n, m in net.named_modules() if m is layer)
    return gradcam_figure(images[picked], maps, labels[picked], probs[picked], threshold, datamodule.classes, name)
