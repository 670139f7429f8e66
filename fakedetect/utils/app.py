"""The one decorator of every command: Hydra's main over the configs (fakedetect.config_dir), a quiet console,
one-line errors, and the checks of the composed config that need no task (no NaN or infinity in it; the machine can
run it).

    @command("train")
    def main(cfg: DictConfig) -> float | None: ...

`main()` then reads the command line as `python -m fakedetect.train` and the `fakedetect-train` script both do;
SIGINT, SIGTERM and SIGHUP stop it cleanly, in one line (`fakedetect/utils/signals.py`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import hydra
from omegaconf import DictConfig, OmegaConf

from fakedetect import config_dir
from fakedetect.utils.console import quiet_console
from fakedetect.utils.device import check_trainer_devices, check_trainer_precision
from fakedetect.utils.errors import is_int, one_line_errors, refuse_non_finite, require
from fakedetect.utils.locks import HoldRunFolder
from fakedetect.utils.signals import doing, stop_on_signals

T = TypeVar("T")


def hydra_options() -> dict[str, Any]:
    """What the installed Hydra wants besides the config: 1.4 takes an execution whitelist and deprecates
    version_base; 1.3 warns without version_base and has no whitelist.

    The whitelist lets Hydra's logging use its built-in handlers only (no legacy-logging warning) and Hydra build
    the one callback of conf/hydra/default.yaml, which owns the run folder; it adds nothing to the allow-lists that
    fakedetect.utils.builders hands every instantiate.
    """
    if "execution_whitelist" in inspect.signature(hydra.main).parameters:
        return {"execution_whitelist": (HoldRunFolder.__module__ + "." + HoldRunFolder.__qualname__,)}
    return {"version_base": "1.3"}


def command(config_name: str) -> Callable[[Callable[[DictConfig], T]], Callable[[], None]]:
    """Make `task(cfg)` a command composing conf/<config_name>.yaml with the command line."""

    def decorate(task: Callable[[DictConfig], T]) -> Callable[[], None]:
        @functools.wraps(task)
        def checked(cfg: DictConfig) -> T:
            refuse_non_finite(OmegaConf.to_container(cfg, resolve=False))
            trainer = cfg.get("trainer")  # the machine can run it, before the task prints or reads anything
            if trainer is not None:
                check_trainer_devices(trainer.get("accelerator"), trainer.get("devices"))
                check_trainer_precision(trainer.get("accelerator"), trainer.get("precision"))
            seed = cfg.get("seed")
            require("seed", seed, seed is None or is_int(seed), "a whole number or null")
            return task(cfg)

        guarded = one_line_errors(checked)

        @functools.wraps(task)
        def job(cfg: DictConfig) -> T:
            quiet_console()  # again here: a launcher may run the job in a process of its own
            with doing(f"running {config_name}"):
                return guarded(cfg)

        @stop_on_signals
        @functools.wraps(task)
        def main() -> None:
            quiet_console()  # before Hydra starts: a sweeper warns before any job runs
            configs = one_line_errors(config_dir)()  # a package installed without them: one line, not Hydra's error
            hydra.main(config_path=str(configs), config_name=config_name, **hydra_options())(job)()

        return main

    return decorate
