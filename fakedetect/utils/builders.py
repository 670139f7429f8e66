"""Instantiate the run's parts from a composed config; the only code that reads config groups.

Every `instantiate` of the package goes through `instantiate` here, which hands Hydra an execution allow-list:
a config (and above all one stored in a checkpoint, which anyone may have written) can only name the classes
fakedetect builds, never an arbitrary callable such as `shutil.copyfile` or `os.system`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import hydra.utils
import lightning as L
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from fakedetect.modules.detector import Detector
from fakedetect.utils.errors import ConfigError, user_error

log = logging.getLogger(__name__)

# What a checkpoint's (or an exported detector's) config may build: fakedetect's data module, nets, modules and
# losses, and the component libraries a config names for them. Narrower than whole packages on purpose: torch.save,
# torch.hub, torchvision.utils.save_image, torchvision.datasets, timm.create_model(pretrained=True), lpips.LPIPS or
# torchmetrics' CLIP and LPIPS metrics would write files or download from a config alone (LPIPS is reached through
# fakedetect.losses, which loads local weights).
MODEL_TARGETS = (
    "fakedetect.data.datamodule.*",
    "fakedetect.data.augment.*",
    "fakedetect.modules.*",
    "fakedetect.nets.*",
    "fakedetect.losses.*",
    "torch.nn.*",
    "torch.optim.*",
    "torchvision.ops.*",
    "torchvision.transforms.*",
    "timm.layers.*",
    "timm.loss.*",
    "timm.optim.*",
    "timm.scheduler.*",
    "torchmetrics.classification.*",
    "torchmetrics.aggregation.*",
    "torchmetrics.regression.*",
    "pytorch_msssim.*",
)
# What a run's own config (conf/ and the command line) may build besides: Lightning's trainer and its parts, and
# fakedetect's callbacks (the figures, EMA).
RUN_TARGETS = (
    *MODEL_TARGETS,
    "fakedetect.callbacks.*",
    "lightning.pytorch.trainer.*",
    "lightning.pytorch.callbacks.*",
    "lightning.pytorch.loggers.*",
    "lightning.pytorch.strategies.*",
    "lightning.pytorch.plugins.*",
    "lightning.pytorch.profilers.*",
    "lightning.pytorch.accelerators.*",
)


def instantiate(
    config: Any, *args: Any, allow: Sequence[str] = RUN_TARGETS, source: str = "config", **kwargs: Any
) -> Any:
    """Hydra's instantiate under the `allow` list; a refused or unknown target is one ConfigError naming `source`."""
    try:
        return hydra.utils.instantiate(config, *args, _execution_whitelist_=list(allow), **kwargs)
    except InstantiationException as err:
        if user_error(err) is not None:
            raise
        raise ConfigError(f"{source}: {refusal(err, allow)}") from err


def refusal(err: InstantiationException, allow: Sequence[str]) -> str:
    """Hydra's multi-line refusal as one line: the target, its key and which list it is not on."""
    text = str(err)
    target = re.search(r"target '([^']*)'", text, re.IGNORECASE)
    key = re.search(r"^full_key: (.*)$", text, re.MULTILINE)
    where = f" at {key.group(1)}" if key else ""
    if target is None:
        return " ".join(text.split()) + where
    named = {MODEL_TARGETS: "MODEL_TARGETS", RUN_TARGETS: "RUN_TARGETS"}.get(tuple(allow))
    listed = f"fakedetect.utils.builders.{named}" if named else ", ".join(allow)
    if isinstance(err.__cause__, ImportError):
        return f"_target_ '{target.group(1)}'{where} cannot be imported: no such class or function"
    return f"_target_ '{target.group(1)}'{where} is refused: fakedetect builds only targets on its allow-list: {listed}"


def resolve_precision(trainer_cfg: DictConfig) -> str:
    """`precision: auto` is bf16-mixed on a bf16-capable GPU, 16-mixed on an older one, else 32-true."""
    precision = str(trainer_cfg.get("precision", "auto"))
    if precision != "auto":
        return precision
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if not on_gpu:
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def build_list(cfg: DictConfig | None) -> list:
    """Every `_target_` entry of a callbacks or logger group, in order."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def build_model(cfg: DictConfig, allow: Sequence[str] = RUN_TARGETS, source: str = "config") -> Detector:
    loss = instantiate(cfg.loss, allow=allow, source=source)
    model = instantiate(cfg.model, loss=loss, allow=allow, source=source)
    if not isinstance(model, Detector):  # train, eval, predict and the reports score through Detector's interface
        raise ConfigError(
            f"{source}: model._target_ must be fakedetect.modules.Detector or a subclass of it, "
            f"got {type(model).__module__}.{type(model).__qualname__}"
        )
    return model


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list) -> L.Trainer:
    return instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, precision=resolve_precision(cfg.trainer)
    )


def count_parameters(model: torch.nn.Module, trainable: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)
