"""Which image belongs to which split: plain functions over the listed images' labels, split folders, sources and
file digests, so every loader plans the same splits and marks the same test duplicates."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fakedetect.data.layouts import SPLITS, DataLayoutError, Entry
from fakedetect.utils.errors import ConfigError

if TYPE_CHECKING:
    from fakedetect.data.config import DataConfig

log = logging.getLogger(__name__)


class Rows(Protocol):
    """Every image the splits are planned from, in one order (a decoded cache, or the stream loader's listing)."""

    labels: np.ndarray
    splits: np.ndarray  # each image's split folder ("" without one)
    names: list[str]
    sources: np.ndarray  # source names (str)
    digests: np.ndarray  # file digests; b"" for a file that could not be read


@dataclass
class Listed:
    """The stream loader's `Rows`: the listing, with no decoded images."""

    labels: np.ndarray
    splits: np.ndarray
    names: list[str]
    sources: np.ndarray
    digests: np.ndarray


@dataclass
class Split:
    """One split: its rows in the loader's store (decoded cache, listing or packed chunks), with their labels,
    source indices (into `Plan.source_names`) and duplicate marks (a test image byte-identical to a train or val
    file; False in train and val)."""

    index: np.ndarray
    labels: np.ndarray
    sources: np.ndarray
    duplicates: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Plan:
    """The splits of a run, the names their source indices stand for, the test files in test order, the
    unreadable files left out and how many distinct files the marked test duplicates are copies of."""

    splits: dict[str, Split]
    source_names: list[str]
    test_names: list[str]
    skipped: list[str]
    duplicate_groups: int


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, carved) with `fraction` of every class carved out, reproducibly for a seed."""
    rng = np.random.default_rng(seed)
    kept, carved = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(fraction * len(idx)))
        carved.append(idx[:k])
        kept.append(idx[k:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(carved))


def stratified_sample(entries: list[Entry], limit: int | None, seed: int) -> list[Entry]:
    """At most `limit` entries, the same number from every class (a quick subset for tests and sweeps)."""
    if not limit or limit >= len(entries):
        return entries
    labels = np.array([e.label for e in entries])
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    per_class = limit // len(classes)
    picked = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes])
    return [entries[i] for i in np.sort(picked)]


def plan_indices(
    labels: np.ndarray,
    split_names: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    excluded: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Row indices of train, val and test: `val/` and `test/` folders as given; what is missing is carved,
    stratified, from the train rows (or from every row of a source without split folders): test by
    `test_fraction` (1.0: all of it), then val by `val_fraction` after the `excluded` rows leave train."""
    pool = np.flatnonzero((split_names == "train") | (split_names == ""))
    test = np.flatnonzero(split_names == "test")
    if not len(test):
        kept, carved = stratified_split(labels[pool], test_fraction, seed)
        pool, test = pool[kept], pool[carved]
    if excluded is not None:
        pool = pool[~excluded[pool]]
    val = np.flatnonzero(split_names == "val")
    if not len(val):
        kept, carved = stratified_split(labels[pool], val_fraction, seed)
        pool, val = pool[kept], pool[carved]
    # A fixed shuffle, so that any prefix of val or test (limit_val_batches, say) holds both classes.
    rng = np.random.default_rng(seed)
    return {"train": pool, "val": rng.permutation(val), "test": rng.permutation(test)}


def excluded(config: DataConfig, names: list[str]) -> np.ndarray | None:
    """Which rows `data.exclude` (a file of member names, e.g. the data audit's exclude_train.txt) takes out of
    train."""
    if not config.exclude:
        return None
    if not Path(config.exclude).is_file():
        raise ConfigError(
            f"data.exclude: no such file {config.exclude} (a list of member names, one a line, "
            "e.g. the data audit's exclude_train.txt)"
        )
    dropped = set(Path(config.exclude).read_text().split("\n"))
    marked = np.array([n in dropped for n in names], dtype=bool)
    log.info("data.exclude lists %d of these files (%s); they leave train", marked.sum(), config.exclude)
    return marked


def only_train_sources(
    index: dict[str, np.ndarray], rows: Rows, train_sources: list[str], source_names: list[str], root: str
) -> dict[str, np.ndarray]:
    """Train and val keep the fakes of `train_sources` and every real image; test keeps everything."""
    unknown = sorted(set(train_sources) - set(source_names))
    if unknown:
        raise ConfigError(f"data.train_sources: {unknown} not among the sources of {root}: {source_names}")
    keep = np.isin(rows.sources, train_sources) | (rows.labels == 0)
    return {k: v[keep[v]] if k != "test" else v for k, v in index.items()}


def check_classes(
    index: dict[str, np.ndarray], labels: np.ndarray, has_splits: bool, config: DataConfig, skipped: list[str]
) -> None:
    """Every split must hold every class, after decoding, limits and exclusions: a test split of one class
    would report a perfect accuracy that means nothing. With test_fraction=1 (evaluation of a whole source)
    train and val may be empty."""
    for split, idx in index.items():
        if (split == "val" and not config.val_fraction and not len(idx)) or (
            split != "test" and config.test_fraction == 1 and not len(idx)
        ):
            continue
        counts = np.bincount(labels[idx], minlength=len(config.classes))
        for c in np.flatnonzero(counts == 0):
            cls = config.classes[c]
            folder = f"{split}/{cls}" if has_splits else cls
            bad = [n for n in skipped if PurePosixPath(n).parent.as_posix().lower().endswith(folder.lower())]
            if bad:
                why = (
                    f"its {len(bad)} files in '{folder}' are unreadable (e.g. {bad[0]}); replace them, or "
                    "list them with python -m fakedetect.audit"
                )
            elif split == "val":
                why = (
                    f"data.val_fraction={config.val_fraction} carves none of the '{folder}' images; raise it, "
                    "add images, or set data.val_fraction=0 to train without validation"
                )
            elif c == 1 and config.train_sources is not None and split != "test":
                why = f"data.train_sources={config.train_sources} has no fakes in it"
            else:
                why = (
                    f"none of the '{folder}' images is left after data.train_limit, data.test_limit and "
                    "data.exclude; add images or relax those"
                )
            raise DataLayoutError(f"{config.root}: the {split} split has no {cls} images: {why}")


def assemble(
    parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    source_names: list[str],
    test_names: list[str],
    skipped: list[str],
) -> Plan:
    """The plan of splits given as {split: (index, labels, sources, digests)}, with the test images whose file is
    also in train or val marked (an unread file's b"" matches none)."""
    test = parts["test"][3]
    pool = np.concatenate([parts["train"][3], parts["val"][3]])
    copies = np.isin(test, pool[pool != b""]) & (test != b"")
    groups = len(np.unique(test[copies]))
    if groups:
        log.info(
            "%d test images (%d distinct files) are byte-identical to train or val images; test/acc_dedup leaves "
            "them out",
            copies.sum(),
            groups,
        )
    splits = {
        name: Split(index, labels, sources, copies if name == "test" else np.zeros(len(labels), dtype=bool))
        for name, (index, labels, sources, _) in parts.items()
    }
    return Plan(splits, source_names, test_names, skipped, groups)


def plan(rows: Rows, config: DataConfig, skipped: list[str]) -> Plan:
    """The splits of `rows` as `config` asks: split folders, carving, `data.exclude`, `data.train_sources`; every
    split checked to hold both classes."""
    source_names = sorted(set(rows.sources.tolist()))
    sources = np.searchsorted(source_names, rows.sources).astype(np.int64)
    index = plan_indices(
        rows.labels, rows.splits, config.val_fraction, config.test_fraction, config.seed, excluded(config, rows.names)
    )
    if config.train_sources is not None:
        index = only_train_sources(index, rows, config.train_sources, source_names, config.root)
    check_classes(index, rows.labels, bool((rows.splits != "").any()), config, skipped)
    parts = {s: (index[s], rows.labels[index[s]], sources[index[s]], rows.digests[index[s]]) for s in SPLITS}
    return assemble(parts, source_names, [rows.names[i] for i in index["test"]], skipped)
