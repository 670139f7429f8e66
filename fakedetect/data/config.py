"""The data settings (`data.*`), checked once, and the cache keys derived from them.

Each field says what it changes (`Affects`): the files listed, their decoded pixels, the split plan, or the
normalization statistics alone. A cache key covers every field at or below its level, so a new option that changes
pixels is marked PIXELS here and every cache it touches (decoded images, statistics) is keyed on it, with no list of
keys to keep in step.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import Field, dataclass, field, fields
from enum import IntEnum
from pathlib import Path
from typing import Any, TypeGuard

from fakedetect.data.cache import cache_key
from fakedetect.data.decode import DEFAULT_MAX_PIXELS, Fit
from fakedetect.data.layouts import Layout
from fakedetect.data.loaders import LOADERS
from fakedetect.data.sources import DEFAULT_MAX_FILE_BYTES
from fakedetect.utils.errors import ConfigError, is_int, is_number, require

log = logging.getLogger(__name__)

# the smallest side length in pixels a run may decode to; below it no net here has anything to learn from
MIN_RESOLUTION = 8
CLASS_COUNT = 2


class Affects(IntEnum):
    """What a setting changes. Each level's key covers the fields of every level up to it."""

    LISTING = 1  # which files are read (so the decoded images and the stream loader's digests)
    PIXELS = 2  # the decoded pixels of a file
    SPLITS = 3  # which image lands in which split
    STATISTICS = 4  # the normalization statistics alone


# a field's level, fixed or from the whole config (None: no cache depends on it)
Level = Affects | Callable[["DataConfig"], Affects | None] | None


def setting(default: Any, ok: Callable[[Any], bool], expected: str | Callable[[], str], affects: Level = None) -> Any:
    """A field with its check (`data.<name> must be <expected>, got ...` unless `ok`) and its level."""
    metadata = {"ok": ok, "expected": expected, "affects": affects}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def positive(v: object) -> bool:
    return is_int(v) and v > 0


def limit(v: object) -> bool:
    return v is None or (is_int(v) and v >= CLASS_COUNT)


def names(v: object) -> TypeGuard[Iterable[str]]:
    """A list of non-empty strings (a YAML list, not one string or a map)."""
    return (
        not isinstance(v, (str, bytes, Mapping))
        and isinstance(v, Iterable)
        and all(isinstance(s, str) and s for s in v)
    )


def optional_text(v: object) -> bool:
    return v is None or (isinstance(v, str) and v != "")


def two_classes(v: object) -> bool:
    return names(v) and len({c.lower() for c in v}) == len(list(v)) == CLASS_COUNT


def aliases_map(v: object) -> bool:
    return v is None or (isinstance(v, Mapping) and all(isinstance(k, str) and names(a) for k, a in v.items()))


def limited(config: DataConfig) -> bool:
    return bool(config.train_limit or config.test_limit)


LIMIT = f"null (every image) or an integer >= {CLASS_COUNT} (images in the split)"


@dataclass(frozen=True)
class DataConfig:
    """Every `data.<key>` a run depends on, checked before anything is read: a bad value ends in one line naming
    the key. Lists and maps arrive from Hydra as its containers and are kept as plain ones."""

    root: str = field(metadata={"ok": lambda v: v != "", "expected": "a folder or archive path", "affects": None})
    classes: list[str] = setting(
        ["REAL", "FAKE"], two_classes, "two distinct class folder names, e.g. [REAL, FAKE]", Affects.LISTING
    )
    resolution: int = setting(
        32,
        lambda v: is_int(v) and v >= MIN_RESOLUTION,
        f"an integer >= {MIN_RESOLUTION} (pixels a side)",
        Affects.PIXELS,
    )
    channels: int = setting(3, lambda v: is_int(v) and v in (1, 3), "1 (greyscale) or 3 (RGB)", Affects.STATISTICS)
    val_fraction: float = setting(
        0.1,
        lambda v: is_number(v) and 0 <= v < 1,
        "in [0, 1): the share of train images held out for validation (0: no validation)",
        Affects.SPLITS,
    )
    test_fraction: float = setting(
        0.2,
        lambda v: is_number(v) and 0 < v <= 1,
        "in (0, 1]: the share carved as test when the source has no test split (1: all of it, to evaluate it whole)",
        Affects.SPLITS,
    )
    # a limited listing is a seeded sample, so the seed then decides the files too
    seed: int = setting(42, is_int, "an integer", lambda c: Affects.LISTING if limited(c) else Affects.SPLITS)
    batch_size: int = setting(128, positive, "a positive integer")
    eval_batch_size: int = setting(1024, positive, "a positive integer")
    # a loader registered later (a plugin's) is a choice too
    loader: str = setting("memory", lambda v: v in LOADERS, lambda: " | ".join(LOADERS))
    num_workers: int = setting(2, lambda v: is_int(v) and v >= 0, "an integer >= 0")
    train_limit: int | None = setting(None, limit, LIMIT, Affects.LISTING)
    test_limit: int | None = setting(None, limit, LIMIT, Affects.LISTING)
    cache_dir: Path = setting(Path("data/cache"), lambda v: v is None or isinstance(v, (str, Path)), "null or a folder")
    skip_bad: bool = setting(True, lambda v: isinstance(v, bool), "true or false")
    normalize: bool = setting(True, lambda v: isinstance(v, bool), "true or false")
    # only the stream loader samples the train split for its statistics
    stats_sample: int = setting(
        20000, positive, "a positive integer", lambda c: Affects.STATISTICS if c.loader == "stream" else None
    )
    decode_workers: int | None = setting(
        None, lambda v: v is None or positive(v), "null (every core) or a positive integer"
    )
    exclude: str | None = setting(
        None, optional_text, "null or a text file of member names to leave out of train", Affects.SPLITS
    )
    max_pixels: int | None = setting(
        DEFAULT_MAX_PIXELS, lambda v: v is None or positive(v), "null (no limit) or a positive integer", Affects.PIXELS
    )
    # a file over it is not read, so it is skipped as unreadable: its digest, pixels and statistics all change
    max_file_bytes: int | None = setting(
        DEFAULT_MAX_FILE_BYTES,
        lambda v: v is None or positive(v),
        "null (no limit) or a positive integer (bytes)",
        Affects.LISTING,
    )
    fit: Fit = setting(Fit.SQUASH, lambda v: v in Fit.values(), " | ".join(Fit.values()), Affects.PIXELS)
    aliases: dict[str, list[str]] | None = setting(
        None,
        aliases_map,
        "null (the default folder names) or a map from class to a list of folder names, e.g. "
        "{FAKE: [fake, ai, 1_fake]}",
        Affects.LISTING,
    )
    layout: Layout = setting(Layout.AUTO, lambda v: v in Layout.values(), " | ".join(Layout.values()), Affects.LISTING)
    manifest: str | None = setting(None, optional_text, "null or the path of a CSV manifest", Affects.LISTING)
    train_sources: list[str] | None = setting(
        None,
        lambda v: v is None or (names(v) and len(list(v)) > 0),
        "null (every source) or a non-empty list of source names, e.g. [REAL, sdv14]",
        Affects.SPLITS,
    )
    litdata_dir: str | None = setting(
        None, optional_text, "null or the folder (or object storage URL) that python -m fakedetect.pack wrote"
    )

    @classmethod
    def of(cls, root: str, settings: Mapping[str, Any]) -> DataConfig:
        """The config of `data.root=root` and the other `data.*` settings; an unknown key ends in one line."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"data.{unknown[0]} is not a data setting; the settings are {', '.join(sorted(known))}")
        return cls(root=str(root), **settings)

    @classmethod
    def check(cls, name: str, value: Any) -> Any:
        """`value` checked as `data.<name>`, on its own: for a command that reads a few data settings only."""
        metadata = next(f.metadata for f in fields(cls) if f.name == name)
        expected = metadata["expected"]
        require(f"data.{name}", value, metadata["ok"](value), expected() if callable(expected) else expected)
        return value

    def __post_init__(self) -> None:
        for f in fields(self):
            self.check(f.name, getattr(self, f.name))
        require(
            "data.litdata_dir",
            self.litdata_dir,
            self.loader != "litdata" or bool(self.litdata_dir),
            "set with data.loader=litdata: the output folder of python -m fakedetect.pack",
        )
        plain = {
            "classes": [str(c) for c in self.classes],
            "cache_dir": Path(self.cache_dir) if self.cache_dir else Path("data/cache"),
            "fit": Fit(self.fit),
            "layout": Layout(self.layout),
            "aliases": {str(k): [str(a) for a in v] for k, v in self.aliases.items()} if self.aliases else self.aliases,
            "train_sources": sorted(str(s) for s in self.train_sources) if self.train_sources is not None else None,
        }
        for name, value in plain.items():
            object.__setattr__(self, name, value)
        if self.fit == Fit.RANDOM_CROP and self.loader != "stream":
            log.warning(
                "data.fit=random_crop draws a new crop per epoch only with data.loader=stream; the %s loader's "
                "decoded images are centre crops, decoded once",
                self.loader,
            )

    def _level(self, f: Field) -> Affects | None:
        affects = f.metadata["affects"]
        return affects(self) if callable(affects) else affects

    def key(self, upto: Affects, identity: object) -> str:
        """A cache key over the source's `identity` and every setting that affects at most `upto`. A manifest
        outside the source counts by its content (one inside is part of the identity): edited labels must not
        reuse a stale cache."""
        manifest = Path(self.manifest).expanduser() if self.manifest else None
        outside = manifest if manifest is not None and manifest.is_absolute() and manifest.is_file() else None
        parts = {f.name: getattr(self, f.name) for f in fields(self) if (level := self._level(f)) and level <= upto}
        return cache_key(identity, hashlib.sha1(outside.read_bytes()).hexdigest() if outside else None, parts)

    def listing_key(self, identity: object) -> str:
        """What decides the files read: the key of their digests (the stream loader's duplicate marks)."""
        return self.key(Affects.LISTING, identity)

    def pixel_key(self, identity: object) -> str:
        """What decides the decoded images: the decoded cache's key."""
        return self.key(Affects.PIXELS, identity)

    def statistics_key(self, identity: object) -> str:
        """What decides the train split's images and how they are summed up: the statistics cache's key."""
        return self.key(Affects.STATISTICS, identity)
