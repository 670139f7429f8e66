"""Where images come from: a folder, a .zip or a .tar(.gz) in Kaggle's CIFAKE layout or plain class folders.

A source only lists entries and hands out their bytes; decoding lives in `decode.py`, so the same
listing serves the cached in-memory path and the streaming path.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fakedetect.utils.errors import ConfigError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SPLIT_NAMES = ("train", "test")


class DataLayoutError(ConfigError):
    """The source is missing, or its folders are not laid out as `[split/]class/image`."""


@dataclass(frozen=True)
class Entry:
    """One image file: its member name inside the source, its split and its class index."""

    name: str
    split: str
    label: int


@dataclass
class Listing:
    """Every image entry of a source, plus the files that were ignored for not being images."""

    entries: list[Entry]
    ignored: list[str]

    def split(self, name: str) -> list[Entry]:
        return [e for e in self.entries if e.split == name]


class Source:
    """A readable tree of image files, addressed by POSIX-style relative names."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise DataLayoutError(
                f"data source not found: {self.path} (expected a folder, .zip or .tar.gz in CIFAKE's "
                "layout train/{REAL,FAKE}, test/{REAL,FAKE}; set data.root=... or the CIFAKE variable)"
            )

    @staticmethod
    def open(path: str | os.PathLike) -> Source:
        p = Path(path).expanduser()
        name = p.name.lower()
        if p.is_file() and name.endswith(".zip"):
            return ZipSource(p)
        if p.is_file() and (name.endswith((".tar", ".tar.gz", ".tgz"))):
            return TarSource(p)
        if p.is_file():
            raise DataLayoutError(f"data source {p} is a file but not a .zip, .tar or .tar.gz archive")
        return FolderSource(p)

    def identity(self) -> str:
        """A cheap fingerprint that changes when the source does: resolved path, size and mtime."""
        st = self.path.stat()
        return f"{self.path.resolve()}|{st.st_size}|{st.st_mtime_ns}"

    def names(self) -> list[str]:
        raise NotImplementedError

    def read(self, names: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        """Yield (name, bytes) for the wanted names, in whatever order the source reads fastest."""
        raise NotImplementedError

    def read_one(self, name: str) -> bytes:
        raise NotImplementedError

    def list(self, classes: list[str], splits: Iterable[str] = SPLIT_NAMES) -> Listing:
        return layout(self.names(), classes, splits, str(self.path))


class FolderSource(Source):
    def identity(self) -> str:
        # A folder's own mtime misses changes deeper down, so fingerprint the file list instead.
        digest = hashlib.sha1("\n".join(sorted(self.names())).encode()).hexdigest()
        return f"{self.path.resolve()}|{digest}"

    def names(self) -> list[str]:
        root = self.path
        out = []
        for dirpath, _, files in os.walk(root):
            rel = Path(dirpath).relative_to(root).as_posix()
            out.extend(f if rel == "." else f"{rel}/{f}" for f in files)
        return out

    def read_one(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def read(self, names: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        for name in names:
            yield name, self.read_one(name)


class ZipSource(Source):
    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        self._zip: zipfile.ZipFile | None = None

    def _handle(self) -> zipfile.ZipFile:
        # Opened lazily so that a streaming worker process gets its own file handle.
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        return self._zip

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None}

    def names(self) -> list[str]:
        return [i.filename for i in self._handle().infolist() if not i.is_dir()]

    def read_one(self, name: str) -> bytes:
        return self._handle().read(name)

    def read(self, names: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        for name in names:
            yield name, self.read_one(name)


class TarSource(Source):
    def names(self) -> list[str]:
        with tarfile.open(self.path) as tar:
            return [m.name for m in tar if m.isfile()]

    def read_one(self, name: str) -> bytes:
        raise DataLayoutError(
            f"{self.path}: a compressed tar has no random access; use data.loader=memory, or extract it "
            "and point data.root at the folder"
        )

    def read(self, names: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        wanted = set(names)
        with tarfile.open(self.path, mode="r|*") as tar:
            for member in tar:
                if member.isfile() and member.name in wanted:
                    yield member.name, tar.extractfile(member).read()


def layout(names: list[str], classes: list[str], splits: Iterable[str], where: str) -> Listing:
    """Match member names to `[prefix/]split/class/file` or `[prefix/]class/file`, case-insensitively.

    Class folder names are matched without regard to case; the class index is the position in
    `classes`, so with the default ["REAL", "FAKE"] FAKE is 1, the positive class.
    """
    splits = list(splits)
    class_index = {c.lower(): i for i, c in enumerate(classes)}
    entries: list[Entry] = []
    ignored: list[str] = []
    for name in sorted(names):
        parts = PurePosixPath(name).parts
        if any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue
        if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
            ignored.append(name)
            continue
        lowered = [p.lower() for p in parts[:-1]]
        split, label = _place(lowered, class_index, splits)
        if label is None:
            ignored.append(name)
            continue
        entries.append(Entry(name, split, label))
    if not entries:
        raise DataLayoutError(
            f"{where}: no images found in class folders {classes} (expected split/class/image, e.g. "
            "train/REAL/x.jpg, or class/image)"
        )
    has_splits = any(e.split != "" for e in entries)
    if has_splits:
        entries = [e for e in entries if e.split]
    for split in splits if has_splits else [""]:
        for i, cls in enumerate(classes):
            if not any(e.split == split and e.label == i for e in entries):
                missing = f"{split}/{cls}" if split else cls
                raise DataLayoutError(f"{where}: split or class folder '{missing}' is missing or has no images")
    return Listing(entries, ignored)


def _place(dirs: list[str], class_index: dict[str, int], splits: list[str]) -> tuple[str, int | None]:
    if not dirs or dirs[-1] not in class_index:
        return "", None
    label = class_index[dirs[-1]]
    if len(dirs) >= 2 and dirs[-2] in splits:
        return dirs[-2], label
    return "", label
