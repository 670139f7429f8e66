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
