"""The figure of a data audit: sizes.png, the image sizes (dataset.py draws it when the command asks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fakedetect.reporting.figures import new_figure


def draw_sizes(out: Path, width: np.ndarray, height: np.ndarray) -> Path:
    """sizes.png: width against height, and histograms of the aspect ratio and the area; returns its path."""
    fig = new_figure(figsize=(13, 3.5))
    axes = fig.subplots(1, 3)
    axes[0].scatter(width, height, s=2, alpha=0.3)
    axes[0].set(xlabel="width", ylabel="height", title="sizes")
    axes[1].hist(width / height, bins=50)
    axes[1].set(xlabel="width / height", title="aspect ratio")
    axes[2].hist(width * height, bins=50)
    axes[2].set(xlabel="pixels", title="area")
    path = out / "sizes.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
