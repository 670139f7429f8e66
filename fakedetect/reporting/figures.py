"""Figures drawn on their own Agg canvas, so no matplotlib backend is chosen or switched, and sent to loggers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor
from torchmetrics import Metric


def new_figure(**kwargs: Any) -> Figure:
    """A Figure (figsize=..., ...) with a non-interactive canvas: `savefig` and TensorBoard work, no window opens."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def metric_figure(metric: Metric, **kwargs: Any) -> Figure:
    """A torchmetrics metric's own `plot` (confusion matrix, ROC, ...), drawn on a new Agg figure."""
    fig = new_figure()
    metric.plot(ax=fig.subplots(), **kwargs)
    return fig


def log_figure(loggers: Iterable[object], tag: str, fig: Figure, step: int) -> None:
    """Add the figure to every logger with a TensorBoard-style `add_figure`."""
    for logger in loggers:
        add_figure = getattr(getattr(logger, "experiment", None), "add_figure", None)
        if add_figure is not None:
            add_figure(tag, fig, global_step=step, close=False)


def log_image(loggers: Iterable[object], tag: str, image: Tensor, step: int) -> None:
    """Add a (C, H, W) image in [0, 1] to every logger with a TensorBoard-style `add_image`."""
    for logger in loggers:
        add_image = getattr(getattr(logger, "experiment", None), "add_image", None)
        if add_image is not None:
            add_image(tag, image, step)
