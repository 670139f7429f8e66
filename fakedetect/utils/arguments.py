"""The arguments a config gives a class or function, checked against its signature before anything is built, and
the errors a library's constructor raises about them, as one line naming the key."""

from __future__ import annotations

import contextlib
import fnmatch
import inspect
import re
import types
import typing
from collections.abc import Iterator, Sequence
from typing import Any

import hydra.utils
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import ConfigDict, TypeAdapter, ValidationError

from fakedetect.utils.errors import ConfigError

# What a library's constructor raises for arguments it refuses (or for a package a value needs and that is not
# installed, e.g. trainer.accelerator=tpu): one line naming the key, not a traceback
REFUSED_ARGUMENTS = (ValueError, TypeError, ImportError, MisconfigurationException)


@contextlib.contextmanager
def refused_arguments(source: str = "config") -> Iterator[None]:
    """A library's error about its arguments, raised while Hydra builds a config node or calls a `_partial_` one
    (Hydra lets it through with a note naming the node's key), as one ConfigError naming `source` and the key."""
    try:
        yield
    except REFUSED_ARGUMENTS as err:
        notes = [n.removeprefix("full_key: ") for n in getattr(err, "__notes__", []) if n.startswith("full_key: ")]
        if isinstance(err, ConfigError) or not notes:
            raise
        raise ConfigError(f"{source}: {notes[0]}: {' '.join(str(err).split())}") from err


def check_arguments(config: Any, allow: Sequence[str], given: frozenset[str] = frozenset()) -> None:
    """Every `_target_` under `config` (on the allow list) takes the keys given, and a library's of the types its
    signature annotates: one ConfigError naming the key, before anything is built or read. `given`: the keys of
    `config` itself that the caller passes (and so replaces) when it builds it.

    Libraries accept many wrong values at construction and fail at use: Lightning's Trainer takes
    `max_epochs='abc'` and fails after the data is decoded; an optimizer or scheduler (`_partial_`) is only called
    when training starts; a wrong type that a constructor does trip on says so in the library's words, without the
    key. Types are checked by pydantic against the annotations, in its lax mode (a list for a tuple, 1 for 1.0);
    ranges and choices are the constructors' to check.
    """
    if not isinstance(config, (DictConfig, ListConfig)):
        return
    children: list[Any] = list(config) if isinstance(config, DictConfig) else list(range(len(config)))
    for key in children:
        try:
            child = config[key]  # a node as it is, a value resolved
        except OmegaConfBaseException:
            continue
        check_arguments(child, allow)
    if isinstance(config, ListConfig):
        return
    target = config.get("_target_")
    if not isinstance(target, str) or not any(fnmatch.fnmatchcase(target, p) for p in allow):
        return  # Hydra refuses it, in one line (`refusal`)
    try:
        built = hydra.utils.get_object(target)
        signature = inspect.signature(built)
    except Exception:  # noqa: BLE001 - not importable, or no signature: Hydra names the target when it builds
        return
    keys = [str(k) for k in config if not str(k).startswith("_") and str(k) not in given]
    parameters = signature.parameters
    if not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        for key in keys:
            if key not in parameters:
                takes = ", ".join(n for n, p in parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
                raise ConfigError(f"{_full_key(config, key)}: not an argument of {target}; it takes {takes}")
    hints = _type_hints(built)
    for key in keys:
        hint, value = hints.get(key), _resolved(config, key)
        if hint is None or value is _UNRESOLVED or (isinstance(value, dict) and "_target_" in value):
            continue
        try:
            adapter: TypeAdapter = TypeAdapter(hint, config=ConfigDict(arbitrary_types_allowed=True))
        except Exception:  # noqa: BLE001 - an annotation pydantic cannot check: the library checks it
            continue
        try:
            adapter.validate_python(value)
        except ValidationError:
            raise ConfigError(
                f"{_full_key(config, key)} must be {_type_name(hint)} ({target}), got {value!r}"
            ) from None


_UNRESOLVED = object()


def _resolved(config: DictConfig, key: str) -> Any:
    """`config[key]` with its interpolations resolved, as plain dicts and lists; `_UNRESOLVED` for one that cannot
    resolve here (Hydra resolves it, or names it, when it builds)."""
    try:
        value = config[key]
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
    except OmegaConfBaseException:
        return _UNRESOLVED


def _full_key(config: DictConfig, key: str) -> str:
    prefix = config._get_full_key(None)
    return f"{prefix}.{key}" if prefix else key


def _type_hints(built: Any) -> dict[str, Any]:
    """The annotations of a class's constructor or of a function; none where they cannot be resolved."""
    try:
        return typing.get_type_hints(built.__init__ if inspect.isclass(built) else built)
    except Exception:  # noqa: BLE001 - names only imported for type checkers, and the like
        return {}


def _type_name(hint: Any) -> str:
    """An annotation as a reader would say it: `int or null`, `one of '16-mixed', 'bf16-mixed' or null`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        literals = [v for a in args if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
        others = [_type_name(a) for a in args if typing.get_origin(a) is not typing.Literal]
        named = [_type_name(typing.Literal[tuple(literals)])] if literals else []
        return " or ".join(dict.fromkeys(named + others))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is not None:
        return re.sub(r"\b[\w.]+\.(\w+)", r"\1", str(hint)).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))
