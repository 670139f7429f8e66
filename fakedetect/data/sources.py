"""Where images come from: a folder, a .zip or a .tar(.gz) in Kaggle's CIFAKE layout or plain class folders.

A source only lists entries and hands out their bytes; decoding lives in `decode.py`, so the same
listing serves the cached in-memory path and the streaming path.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from fakedetect.data.layouts import DataLayoutError, Listing, check_layout, from_manifest, match

# what a damaged archive raises while it is read: all mean "re-download or re-create it"
ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error)


class Source:
    """A readable tree of image files, addressed by POSIX-style relative names."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise DataLayoutError(
                f"data source not found: {self.path}; get CIFAKE with `python -m fakedetect.download cifake`, "
                "or try the packaged sample with `data=cifake_sample`, or point data.root (root= for audit) "
                "or $CIFAKE at a folder, .zip or .tar.gz laid out as train/{REAL,FAKE}, test/{REAL,FAKE}"
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

    def read(self, names: Iterable[str]) -> Iterator[tuple[str, bytes | str]]:
        """Yield (name, bytes) for the wanted names, in whatever order the source reads fastest; a file that
        cannot be read yields the reason instead, so that it is skipped and counted like an undecodable one."""
        for name in names:
            try:
                yield name, self.read_one(name)
            except DataLayoutError:
                raise
            except Exception as err:  # noqa: BLE001 - any read failure is a bad file, reported by name
                yield name, f"{type(err).__name__}: {one_line(err)}"

    def read_one(self, name: str) -> bytes:
        raise NotImplementedError

    def check_streamable(self) -> None:
        """Raise unless read_one() works, which the streaming loader needs."""

    def list(
        self,
        classes: list[str],
        aliases: Mapping[str, Iterable[str]] | None = None,
        layout: str = "auto",
        manifest: str | os.PathLike | None = None,
    ) -> Listing:
        """Entries by `layout` (see data/layouts.py); with a manifest, the rows whose file this source holds."""
        check_layout(layout, manifest)
        if manifest is None:
            root_name = self.path.name.split(".")[0] if self.path.is_file() else self.path.name
            return match(self.names(), classes, aliases, layout, str(self.path), root_name)
        where, text = self._manifest(manifest)
        return from_manifest(text, where, self.names(), classes, aliases)

    def _manifest(self, manifest: str | os.PathLike) -> tuple[str, str]:
        """(where, text) of a manifest: an absolute path on disk, or a member of this source."""
        path = Path(manifest).expanduser()
        if path.is_absolute():
            where = str(path)
            try:
                blob: bytes | str | None = path.read_bytes()
            except OSError as err:
                blob = one_line(err)
        else:
            where = f"{self.path}/{path.as_posix()}"
            blob = dict(self.read([path.as_posix()])).get(path.as_posix(), "not in the source")
        if not isinstance(blob, bytes):
            raise DataLayoutError(
                f"data.manifest: cannot read {where} ({blob}); give a CSV path relative to "
                "data.root, or an absolute one"
            )
        try:
            return where, blob.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise DataLayoutError(f"{where}: the manifest is not UTF-8 text; save it as a UTF-8 CSV") from None


class FolderSource(Source):
    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        self._files: dict[str, os.stat_result] | None = None
        self.not_regular: list[str] = []

    def _scan(self) -> dict[str, os.stat_result]:
        """Every regular file (links followed) with its stat; anything else is set aside in `not_regular`."""
        if self._files is None:
            self._files, self.not_regular = {}, []
            for dirpath, _, files in os.walk(self.path):
                rel = Path(dirpath).relative_to(self.path).as_posix()
                for f in files:
                    name = f if rel == "." else f"{rel}/{f}"
                    try:
                        st = os.stat(os.path.join(dirpath, f))
                    except OSError:  # a broken link, or a file gone since the walk
                        self.not_regular.append(name)
                        continue
                    if stat.S_ISREG(st.st_mode):
                        self._files[name] = st
                    else:
                        self.not_regular.append(name)
        return self._files

    def identity(self) -> str:
        # A folder's own mtime misses changes deeper down, and names alone miss a file replaced under the same
        # name, so fingerprint every file's name, size and modification time.
        files = self._scan()
        listing = "\n".join(f"{n}|{st.st_size}|{st.st_mtime_ns}" for n, st in sorted(files.items()))
        return f"{self.path.resolve()}|{hashlib.sha1(listing.encode()).hexdigest()}"

    def names(self) -> list[str]:
        return list(self._scan())

    def list(
        self,
        classes: list[str],
        aliases: Mapping[str, Iterable[str]] | None = None,
        layout: str = "auto",
        manifest: str | os.PathLike | None = None,
    ) -> Listing:
        listing = super().list(classes, aliases, layout, manifest)
        listing.not_regular = sorted(self.not_regular)
        return listing

    def read_one(self, name: str) -> bytes:
        # Non-blocking open, then regular files only: a FIFO or device put here after listing must not hang.
        fd = os.open(self.path / name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f"{name} is not a regular file")
            return f.read()


class ZipSource(Source):
    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        self._zip: zipfile.ZipFile | None = None

    def _handle(self) -> zipfile.ZipFile:
        # Opened lazily so that a streaming worker process gets its own file handle.
        if self._zip is None:
            try:
                self._zip = zipfile.ZipFile(self.path)
            except ARCHIVE_ERRORS as err:
                raise DataLayoutError(
                    f"{self.path} is not a readable .zip archive ({one_line(err)}): re-download "
                    "it, or point data.root at the extracted folder"
                ) from None
        return self._zip

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None}

    def names(self) -> list[str]:
        return [i.filename for i in self._handle().infolist() if not i.is_dir()]

    def read_one(self, name: str) -> bytes:
        return self._handle().read(name)


class TarSource(Source):
    def _damaged(self, err: BaseException) -> DataLayoutError:
        return DataLayoutError(
            f"{self.path} is not a readable .tar/.tar.gz archive, or is truncated "
            f"({type(err).__name__}: {one_line(err)}): re-download or re-create it"
        )

    def names(self) -> list[str]:
        try:
            with tarfile.open(self.path) as tar:
                return [m.name for m in tar if m.isfile()]
        except ARCHIVE_ERRORS as err:
            raise self._damaged(err) from None

    def _not_streamable(self) -> DataLayoutError:
        return DataLayoutError(
            f"{self.path}: a .tar archive cannot be streamed (no random access): use "
            "data.loader=memory, or extract it and point data.root at the folder"
        )

    def read_one(self, name: str) -> bytes:
        raise self._not_streamable()

    def check_streamable(self) -> None:
        raise self._not_streamable()

    def read(self, names: Iterable[str]) -> Iterator[tuple[str, bytes | str]]:
        wanted = set(names)
        try:
            with tarfile.open(self.path, mode="r|*") as tar:
                for member in tar:
                    if member.isfile() and member.name in wanted:
                        file = tar.extractfile(member)
                        assert file is not None  # a regular file's member always has one
                        yield member.name, file.read()
        except ARCHIVE_ERRORS as err:
            raise self._damaged(err) from None


def one_line(err: BaseException) -> str:
    """An exception's message on one line (tarfile's, for one, spans several)."""
    return " ".join(str(err).split())
