"""The optimizer and LR scheduler of a detector, from the factories its config gives: per-group learning-rate
scales applied once, and every value checked finite before the first step."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from fakedetect.modules.finite import finite_hyperparameters
from fakedetect.utils.errors import ConfigError


def build_optimizer(
    factory: Callable[..., torch.optim.Optimizer], param_groups: list[dict]
) -> tuple[torch.optim.Optimizer, list[float]]:
    """The optimizer over the net's parameter groups, each group's lr scaled by its `lr_scale`; and the scales."""
    try:
        optimizer = factory(params=param_groups)
    except ValueError as err:  # torch's own range checks, e.g. "Invalid learning rate: nan"
        raise ConfigError(f"model.optimizer: {err}") from None
    scales = [group.pop("lr_scale", 1.0) for group in optimizer.param_groups]
    for group, scale in zip(optimizer.param_groups, scales, strict=True):
        group["lr"] *= scale
    return optimizer, scales


def build_scheduler(
    factory: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None,
    optimizer: torch.optim.Optimizer,
    scales: list[float],
    total_steps: Callable[[], int],
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The scheduler of `optimizer` (groups scaled by `scales`); one taking `total_steps` gets `total_steps()`.
    The optimizer's values are checked finite once the scheduler has set them."""
    if factory is None:
        finite_hyperparameters(optimizer)
        return None
    kwargs: dict[str, object] = {}
    if "total_steps" in inspect.signature(factory).parameters:
        kwargs["total_steps"] = total_steps()
    max_lr = getattr(factory, "keywords", {}).get("max_lr")
    if isinstance(max_lr, (int, float)) and any(scale != 1.0 for scale in scales):
        kwargs["max_lr"] = [max_lr * scale for scale in scales]  # OneCycleLR would reset every group to one
    try:
        scheduler = factory(optimizer, **kwargs)
    except (ValueError, ArithmeticError) as err:  # its own checks, or arithmetic on them (div_factor=0)
        raise ConfigError(f"model.scheduler: {err}") from None
    finite_hyperparameters(optimizer)  # the scheduler has set the first step's values
    return scheduler
