"""Instantiate the run's parts from a composed config; the only code that reads config groups.

Every `instantiate` of the package goes through `instantiate` here, which hands Hydra an execution allow-list:
a config (and above all one stored in a checkpoint, which anyone may have written) can only name the classes
fakedetect builds, never an arbitrary callable such as `shutil.copyfile` or `os.system`.

A user's own classes (a net, a loss, a data module of their package) are built only where the user says so, and
only here: the command's own `trust` setting or the FAKEDETECT_TRUST variable names their packages (`trusted`).
A config read from a file (a checkpoint, an exported detector) never grants trust, whatever it holds: the trust
its training run was given is stored in it but never read back (docs/extending.md).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import hydra.utils
import lightning as L
import torch
from hydra.errors import InstantiationException
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from omegaconf import DictConfig

from fakedetect.modules.detector import Detector
from fakedetect.utils.arguments import check_arguments, refused_arguments
from fakedetect.utils.errors import ConfigError, is_int, require, user_error

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


# The environment's trust, added to every command's `trust` setting: comma-separated patterns, e.g. mylab.*
TRUST_ENV = "FAKEDETECT_TRUST"
# A trust pattern: a module path (a class or function), or `package.*` for everything under a package
TRUST_PATTERN = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(\.\*)?")
# The packages the allow-lists already decide about: trust cannot widen them, so `torch.save` stays refused
LISTED_PACKAGES = frozenset(pattern.split(".")[0] for pattern in RUN_TARGETS)


def trusted(setting: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """The user's own packages a command may build besides the allow-lists: the command's `trust` setting (from
    its own config and command line, never from a checkpoint's) and FAKEDETECT_TRUST. A pattern that names no
    module, or Python's standard library, or a package the allow-lists speak for, is one ConfigError."""
    if setting is None:
        setting = []
    elif isinstance(setting, str):
        setting = [setting]
    elif not isinstance(setting, Sequence):
        raise ConfigError(f"trust={setting}: give a list of your own packages, e.g. trust=[mylab.*]")
    given = [("trust", p) for p in setting] + [
        (TRUST_ENV, p.strip()) for p in os.environ.get(TRUST_ENV, "").split(",") if p.strip()
    ]
    for key, pattern in given:
        why = untrustable(pattern)
        if why is not None:
            raise ConfigError(f"{key}={pattern}: {why}")
    return tuple(dict.fromkeys(pattern for _, pattern in given))


def untrustable(pattern: object) -> str | None:
    """Why `pattern` cannot be trusted, or None: trust names the user's own packages, nothing else."""
    if not isinstance(pattern, str) or not TRUST_PATTERN.fullmatch(pattern):
        return "not a module pattern; trust your package as mylab.* (all of it) or one class as mylab.nets.MyNet"
    top = pattern.split(".")[0]
    if top in sys.stdlib_module_names:
        return f"{top} is Python's standard library, which no config builds; trust names your own packages"
    if top in LISTED_PACKAGES:
        return (
            f"what fakedetect builds of {top} is its allow-list (fakedetect.utils.builders.RUN_TARGETS); trust "
            "names your own packages"
        )
    return None


def instantiate(
    config: Any,
    *args: Any,
    allow: Sequence[str] = RUN_TARGETS,
    trust: str | Sequence[str] | None = None,
    source: str = "config",
    **kwargs: Any,
) -> Any:
    """Hydra's instantiate under the `allow` list and what the user trusts (`trusted(trust)`), its arguments checked
    first (`check_arguments`); a refused or unknown target, or arguments its constructor refuses, are one
    ConfigError naming `source` and the key."""
    trust = trusted(trust)
    check_arguments(config, [*allow, *trust], given=frozenset(kwargs))
    try:
        with refused_arguments(source):
            return hydra.utils.instantiate(config, *args, _execution_whitelist_=[*allow, *trust], **kwargs)
    except InstantiationException as err:
        if user_error(err) is not None:
            raise
        raise ConfigError(f"{source}: {refusal(err, allow, trust)}") from err


def refusal(err: InstantiationException, allow: Sequence[str], trust: Sequence[str] = ()) -> str:
    """Hydra's multi-line refusal as one line: the target, its key, which lists it is not on and, for a package
    that could be the user's own, how to trust it."""
    text = str(err)
    target = re.search(r"target '([^']*)'", text, re.IGNORECASE)
    key = re.search(r"^full_key: (.*)$", text, re.MULTILINE)
    where = f" at {key.group(1)}" if key else ""
    if target is None:
        return " ".join(text.split()) + where
    name = target.group(1)
    if isinstance(err.__cause__, ImportError):
        cause: BaseException = err.__cause__
        while cause.__cause__ is not None:  # the import's own error, below Hydra's multi-line wrapping
            cause = cause.__cause__
        return (
            f"_target_ '{name}'{where} cannot be imported ({type(cause).__name__}: {' '.join(str(cause).split())}): "
            "no such class or function, or its package is not installed or on PYTHONPATH"
        )
    named = {MODEL_TARGETS: "MODEL_TARGETS", RUN_TARGETS: "RUN_TARGETS"}.get(tuple(allow))
    listed = f"fakedetect.utils.builders.{named}" if named else ", ".join(allow)
    if trust:
        listed += f" and what you trust ({', '.join(trust)})"
    package = f"{name.split('.')[0]}.*"
    hint = (
        f"; if it is your own code, trust it: trust=[{package}] or {TRUST_ENV}={package}"
        if untrustable(package) is None
        else ""
    )
    return f"_target_ '{name}'{where} is refused: fakedetect builds only targets on its allow-list ({listed}){hint}"


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


def build_list(cfg: DictConfig | None, trust: str | Sequence[str] | None = None) -> list:
    """Every `_target_` entry of a callbacks or logger group, in order."""
    if not cfg:
        return []
    return [instantiate(c, trust=trust) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def build_model(
    cfg: DictConfig,
    allow: Sequence[str] = RUN_TARGETS,
    trust: str | Sequence[str] | None = None,
    source: str = "config",
) -> Detector:
    """The loss and the detector of a config; `trust` is the command's own setting, never the config's."""
    loss = instantiate(cfg.loss, allow=allow, trust=trust, source=source)
    model = instantiate(cfg.model, loss=loss, allow=allow, trust=trust, source=source)
    if not isinstance(model, Detector):  # train, eval, predict and the reports score through Detector's interface
        raise ConfigError(
            f"{source}: model._target_ must be fakedetect.modules.Detector or a subclass of it, "
            f"got {type(model).__module__}.{type(model).__qualname__}"
        )
    return model


def check_optimizer(model: Detector) -> None:
    """The optimizer and LR scheduler built once on the model's parameters and dropped, so that a value they refuse
    (`model.optimizer.lr=-1`) is one line before any data is read, not when training starts."""
    with refused_arguments():
        optimizer, scales = model.build_optimizer()
        model.build_scheduler(optimizer, scales, lambda: 1000)


# Trainer counts that Lightning divides by in the loop, after the data is decoded, without checking them first
DIVISORS = ("check_val_every_n_epoch", "accumulate_grad_batches")


def build_trainer(
    cfg: DictConfig, callbacks: list, loggers: list, trust: str | Sequence[str] | None = None
) -> L.Trainer:
    """The run's Trainer. Its processes each draw their own share of every split from the loaders (each image
    once: Lightning's DistributedSampler would pad the last shares with repeats, scored twice); strategies that
    spawn their processes are refused, since only the logged metrics come back from them."""
    for key in DIVISORS:
        value = cfg.trainer.get(key)
        if value is not None:
            require(f"trainer.{key}", value, is_int(value) and value >= 1, "a whole number >= 1")
    if cfg.trainer.get("use_distributed_sampler"):
        raise ConfigError(
            "trainer.use_distributed_sampler=true: fakedetect's loaders give each process its own share of every "
            "split; leave it out"
        )
    trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        precision=resolve_precision(cfg.trainer),
        use_distributed_sampler=False,
        trust=trust,
    )
    if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
        raise ConfigError(
            f"trainer.strategy={cfg.trainer.get('strategy')}: processes it starts by "
            f"{trainer.strategy.launcher._start_method} hand back only the logged metrics, not the per-source "
            "rows, epochs and splits a run records; use trainer.strategy=ddp (every process runs the command; on "
            "CPU: trainer=ddp_sim)"
        )
    return trainer


def count_parameters(model: torch.nn.Module, trainable: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)
