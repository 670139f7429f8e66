"""Grad-CAM (pytorch-grad-cam) on test images: where a detector looks, on hits and misses of both classes."""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.figure import Figure
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from torch import Tensor, nn

from fakedetect.data.datamodule import ImageDataModule
from fakedetect.reporting.figures import plt

MIN_CAM_SIZE = 4


def cam_layer(net: nn.Module, inputs: Tensor) -> nn.Module:
    """The deepest of the net's candidate layers (a backbone's stages, else its last convolution) whose output
    is still at least MIN_CAM_SIZE pixels wide for these inputs: ResNet-18's layer4 is 1x1 on 32 px images,
    and a map of one pixel says nothing about where the net looks."""
    if hasattr(net, "cam_layers"):
        candidates = net.cam_layers()
    else:
        candidates = [m for m in net.modules() if isinstance(m, nn.Conv2d)][-1:]
    if not candidates:
        raise ValueError(f"Grad-CAM needs a convolutional net; {type(net).__name__} has no Conv2d layer")
    widths: dict[int, int] = {}

    def record(module: nn.Module, _: tuple, out: Tensor) -> None:
        widths[id(module)] = out.shape[-1]

    hooks = [m.register_forward_hook(record) for m in candidates]
    with torch.no_grad():
        net(inputs[:1])
    for hook in hooks:
        hook.remove()
    return next((m for m in reversed(candidates) if widths.get(id(m), 0) >= MIN_CAM_SIZE), candidates[0])


def pick_examples(labels: np.ndarray, probs: np.ndarray, threshold: float, n: int) -> np.ndarray:
    """Up to n indices, shared as evenly as there are images among correct REAL, correct FAKE, misclassified
    REAL and misclassified FAKE, grouped in that order."""
    correct = (probs > threshold).astype(labels.dtype) == labels
    buckets = [np.flatnonzero((labels == c) & (correct == ok)) for ok in (True, False) for c in (0, 1)]
    take = [0] * len(buckets)
    while sum(take) < n and any(t < len(b) for t, b in zip(take, buckets, strict=True)):
        for k, bucket in enumerate(buckets):
            if take[k] < len(bucket) and sum(take) < n:
                take[k] += 1
    return np.concatenate([b[:t] for b, t in zip(buckets, take, strict=True)]).astype(int)


@torch.inference_mode()
def score_test_images(
    net: nn.Module, datamodule: ImageDataModule, pool: int, device: torch.device
) -> tuple[Tensor, np.ndarray, np.ndarray]:
    """The first `pool` test images as uint8 NCHW on the CPU, their labels and P(FAKE)."""
    datamodule.setup("test")
    images, labels, probs = [], [], []
    for x, y in datamodule.test_dataloader():
        probs.append(net(datamodule.preprocess(x.to(device))).float().sigmoid().cpu())
        images.append(x.cpu())
        labels.append(y.cpu())
        if sum(len(b) for b in labels) >= pool:
            break
    return torch.cat(images)[:pool], torch.cat(labels)[:pool].numpy(), torch.cat(probs)[:pool].numpy()


def gradcam_maps(net: nn.Module, layer: nn.Module, inputs: Tensor, targets: list[int]) -> np.ndarray:
    """(N, H, W) maps in [0, 1] at the input's size, for class `targets[i]` (1 = FAKE) of image i."""
    # The input requires grad so that gradients reach the CAM layer even through frozen stages.
    inputs = inputs.detach().clone().requires_grad_(True)
    with GradCAM(model=net, target_layers=[layer]) as cam:
        return cam(input_tensor=inputs, targets=[BinaryClassifierOutputTarget(t) for t in targets])


def gradcam_figure(
    images: Tensor, maps: np.ndarray, labels: np.ndarray, probs: np.ndarray, threshold: float,
    classes: list[str], layer_name: str, cols: int = 4,
) -> Figure:
    """Image and overlay side by side; titles give the true class and P(FAKE), green if right, red if wrong."""
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(4 * cols, 2.3 * rows + 0.5), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for k, (image, cam, label, prob) in enumerate(zip(images, maps, labels, probs, strict=True)):
        rgb = image.permute(1, 2, 0).numpy().astype(np.float32) / 255
        right = int(prob > threshold) == int(label)
        left, over = axes[k // cols, 2 * (k % cols)], axes[k // cols, 2 * (k % cols) + 1]
        left.imshow(rgb, interpolation="nearest")
        left.set_title(f"{classes[int(label)]} p={prob:.2f}", color="green" if right else "red", fontsize=9)
        over.imshow(show_cam_on_image(rgb, cam, use_rgb=True), interpolation="nearest")
        over.set_title("correct" if right else "misclassified", color="green" if right else "red", fontsize=9)
    fig.suptitle(f"Grad-CAM at {layer_name} for the predicted class; titles: true class, p = P({classes[1]}), "
                 f"threshold {threshold}")
    return fig


def explain_test_images(
    net: nn.Module, datamodule: ImageDataModule, threshold: float, n: int = 16, pool: int = 1000,
    device: torch.device | None = None,
) -> Figure:
    """Score `pool` test images, pick n hits and misses of both classes, return their Grad-CAM grid."""
    device = device or torch.device("cpu")
    net = net.to(device).eval()
    images, labels, probs = score_test_images(net, datamodule, pool, device)
    picked = pick_examples(labels, probs, threshold, n)
    if not len(picked):
        raise ValueError("no test images to explain")
    predicted = [int(p > threshold) for p in probs[picked]]
    inputs = datamodule.preprocess(images[picked].to(device))
    layer = cam_layer(net, inputs)
    maps = gradcam_maps(net, layer, inputs, predicted)
    name = next(n for n, m in net.named_modules() if m is layer)
    return gradcam_figure(images[picked], maps, labels[picked], probs[picked], threshold, datamodule.classes, name)
