"""Sending matplotlib figures to whichever loggers can show them."""

from __future__ import annotations

from collections.abc import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def log_figure(loggers: Iterable[object], tag: str, fig: Figure, step: int) -> None:
    """Add the figure to every logger with a TensorBoard-style `add_figure`, then close it."""
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_figure"):
            experiment.add_figure(tag, fig, global_step=step, close=False)
    plt.close(fig)
