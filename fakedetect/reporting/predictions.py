"""Scores of a trained net over a data split, for reports that need every prediction at once."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fakedetect.data.datamodule import ImageDataModule


@torch.no_grad()
def predict_images(net: nn.Module, datamodule: ImageDataModule, images: torch.Tensor, batch_size: int = 1024,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """Probability of FAKE for uint8 NCHW images, preprocessed exactly as in evaluation."""
    net = net.eval().to(device)
    out = []
    for start in range(0, len(images), batch_size):
        x = datamodule.preprocess(images[start : start + batch_size].to(device))
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                            enabled=torch.device(device).type == "cuda"):
            out.append(net(x).float().sigmoid().cpu())
    return torch.cat(out).numpy()


def split_images(datamodule: ImageDataModule, split: str) -> tuple[torch.Tensor, np.ndarray]:
    """A split's uint8 NCHW images and labels (memory loader), for scoring and for showing mistakes."""
    images, labels = datamodule.splits[split]
    if not images.size:
        raise ValueError("reports need data.loader=memory (images held in memory); set it for eval")
    return torch.from_numpy(images).permute(0, 3, 1, 2), labels
