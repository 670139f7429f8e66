"""Errors whose message alone tells the user what to change, and the one place that prints them as one line."""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TypeGuard, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf.errors import MissingMandatoryValue

T = TypeVar("T")


class ConfigError(ValueError):
    """The run cannot go on with this config or input; the message names the file or key and the fix."""


class NonFiniteError(ConfigError):
    """A NaN or infinity where a loss, a weight, a statistic or a score must be a number (a diverged training, a
    damaged checkpoint, an overflow): the run stops before anything is written from it. A search records such a trial
    as pruned."""


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require(key: str, value: object, ok: bool, expected: str) -> None:
    """Raise `key must be <expected>, got <value>` unless ok: checked at construction, before anything runs on it."""
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")


def require_each(
    prefix: str, values: Mapping[str, object], checks: Iterable[tuple[str, Callable[[object], bool], str]]
) -> None:
    """`require` of every (key, test, expected) in `checks` on `values[key]`, named `<prefix>.<key>`."""
    for key, ok, expected in checks:
        require(f"{prefix}.{key}", values[key], ok(values[key]), expected)


def refuse_non_finite(value: object, key: str = "") -> None:
    """A NaN or infinity anywhere in a config is no setting (null says "none" where a key allows it): NaN passes every
    range check unnoticed, as it compares false with every bound (`model.optimizer.momentum=nan` trained on NaN), and
    an infinity reaches libraries that count with it (`trainer.max_epochs=inf` failed inside Lightning). One line
    naming its key; interpolations are not followed, so the key that holds the value is the one named."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value}: NaN and infinity are not settings; give a finite number (or null)")
    if isinstance(value, Mapping):
        for k, v in value.items():
            refuse_non_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            refuse_non_finite(v, f"{key}[{i}]")


def user_error(err: BaseException | None) -> ConfigError | None:
    """The ConfigError behind `err` (Hydra's instantiate wraps a constructor's error in its own), if any."""
    while err is not None:
        if isinstance(err, ConfigError):
            return err
        if isinstance(err, MissingMandatoryValue):  # a `???` key of the command's config left out
            return ConfigError(f"{err.full_key} is required: add {err.full_key}=... to the command")
        # Lightning's word for a setting it refuses, raised where it finds it (a callback's monitor that is never
        # logged: at the end of the first epoch); Lightning is loaded wherever it can be raised
        lightning = sys.modules.get("lightning.fabric.utilities.exceptions")
        if lightning is not None and isinstance(err, lightning.MisconfigurationException):
            return ConfigError(" ".join(str(err).split()))
        if not isinstance(err, InstantiationException):
            return None
        err = err.__cause__
    return None


def full_traceback() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def one_line_errors(task: Callable[..., T]) -> Callable[..., T]:
    """Entry points print a ConfigError as one line and exit 1; HYDRA_FULL_ERROR=1 keeps the traceback.

    In a multirun the error propagates, so the sweeper records it as the trial's failure and goes on.
    """

    @functools.wraps(task)
    def wrapper(*args: object, **kwargs: object) -> T:
        try:
            return task(*args, **kwargs)
        except Exception as err:
            if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
                exit_one_line(err)
            raise

    return wrapper


def exit_one_line(err: BaseException) -> None:
    """Exit 1 printing `error: <message>` where `err` is (or wraps) a ConfigError, unless HYDRA_FULL_ERROR=1; return
    otherwise. For entry points, and a sweeper's own errors (which Hydra would print as a traceback)."""
    found = user_error(err)
    if found is not None and not full_traceback():
        raise SystemExit(f"error: {found}") from None
