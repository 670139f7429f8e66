"""Where images come from: a folder, a .zip or a .tar(.gz) in Kaggle's CIFAKE layout or plain class folders.

A source only lists entries and hands out their bytes; decoding lives in `decode.py`, so the same
listing serves the cached in-memory path and the streaming path.

Every file is read through `read_bounded`: its size, as the folder or the archive's header declares it, is
checked against `max_bytes` (data.max_file_bytes) before a byte of it is read, and no more is read than it
declares, so a 1.6 MB zip whose member expands to 1.5 GB is refused in a millisecond. The archive formats' own
decoders are kept to what can be bounded: a zip member compressed other than by deflate (bzip2, LZMA: zipfile
inflates a whole input block at once, whatever size the header declares) is refused unread, and a tar header that
tarfile would read whole (pax, GNU long names) is refused above `MAX_TAR_HEADER`, a GNU sparse member always.
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
from typing import IO

from fakedetect.data.layouts import DataLayoutError, Listing, check_layout, from_manifest, match

# what a damaged archive raises while it is read: all mean "re-download or re-create it" (RecursionError: tarfile
# follows a chain of pax headers by recursion)
ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error, RecursionError)
# files (and archive members) over this many bytes are refused before they are read (data.max_file_bytes; None: no
# limit): 64 MiB, above any image file of the detection datasets (a 16-bit TIFF of 4000 x 3000 is 72 MB, though),
# and the most that reading one file can hold in memory
DEFAULT_MAX_FILE_BYTES = 64 << 20
# the largest tar header (pax, GNU long name) read: real ones hold a path or a few attributes, far under it
MAX_TAR_HEADER = 1 << 20
# the zip compressions whose members are read: zipfile bounds what deflate inflates per read, not bzip2 or LZMA
ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}


class FileTooLarge(ValueError):
    """A file or archive member over data.max_file_bytes: refused unread, skipped and counted like an unreadable
    one."""


def read_bounded(f: IO[bytes], size: int, limit: int | None) -> bytes:
    """The bytes of `f`, whose declared `size` is checked against `limit` before anything is read; then no more
    than size + 1 bytes are read (zipfile inflates as much as it is asked for), since a declared size can lie: a
    forged header, a file grown since it was listed."""
    if limit is None:
        return f.read()
    if size > limit:
        raise FileTooLarge(
            f"{size:,} bytes, over data.max_file_bytes={limit}: not read (a possible decompression bomb; raise "
            "data.max_file_bytes to read it)"
        )
    data = f.read(size + 1)
    if len(data) > size:
        raise FileTooLarge(f"holds more than the {size:,} bytes its header declares: not read further")
    return data


def read_file(path: str | os.PathLike, limit: int | None = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes, at most `limit` of them. Opened without blocking, then checked to be a regular
    file: a FIFO or device named like an image must not hang the read or never end it."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is not a regular file")
        return read_bounded(f, st.st_size, limit)


class BoundedTarInfo(tarfile.TarInfo):
    """A tar member whose header tarfile would read whole, whatever size it declares (a pax or GNU long-name
    header, a GNU sparse map: a 1.4 MB .tar.gz can declare a 300 MB pax header, read into memory at listing), is
    refused before it is read. tarfile has no limit of its own, so its member hook is extended here."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        header = {
            tarfile.XHDTYPE: "pax",
            tarfile.XGLTYPE: "pax global",
            tarfile.SOLARIS_XHDTYPE: "Solaris extended",
            tarfile.GNUTYPE_LONGNAME: "GNU long name",
            tarfile.GNUTYPE_LONGLINK: "GNU long link",
        }.get(self.type)
        if header and self.size > MAX_TAR_HEADER:
            raise tarfile.ReadError(
                f"a {header} header of {self.size:,} bytes at byte {self.offset:,} (at most {MAX_TAR_HEADER:,} "
                "are read)"
            )
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise tarfile.ReadError(f"a GNU sparse member at byte {self.offset:,} (an image is never sparse)")
        return super()._proc_member(tarfile_)  # type: ignore[misc]  # private: not in the type stubs

    def _proc_gnusparse_10(self, next: tarfile.TarInfo, pax_headers: dict, tarfile_: tarfile.TarFile) -> None:
        # a sparse map of any length, read block by block from the member's data
        raise tarfile.ReadError(f"a GNU sparse member (format 1.0) at byte {self.offset:,} (an image is never sparse)")


class Source:
    """A readable tree of image files, addressed by POSIX-style relative names; a file over `max_bytes` is refused
    unread (the module docstring)."""

    def __init__(self, path: str | os.PathLike, max_bytes: int | None = DEFAULT_MAX_FILE_BYTES) -> None:
        self.path = Path(path).expanduser()
        self.max_bytes = max_bytes
        # entries that names() leaves out as not regular files: FIFOs, devices, broken links; an archive's links
        self.not_regular: list[str] = []
        if not self.path.exists():
            raise DataLayoutError(
                f"data source not found: {self.path}; get CIFAKE with `python -m fakedetect.download cifake`, "
                "or try the packaged sample with `data=cifake_sample`, or point data.root (root= for audit) "
                "or $CIFAKE at a folder, .zip or .tar.gz laid out as train/{REAL,FAKE}, test/{REAL,FAKE}"
            )

    @staticmethod
    def open(path: str | os.PathLike, max_bytes: int | None = DEFAULT_MAX_FILE_BYTES) -> Source:
        p = Path(path).expanduser()
        name = p.name.lower()
        if p.is_file() and name.endswith(".zip"):
            return ZipSource(p, max_bytes)
        if p.is_file() and (name.endswith((".tar", ".tar.gz", ".tgz"))):
            return TarSource(p, max_bytes)
        if p.is_file():
            raise DataLayoutError(f"data source {p} is a file but not a .zip, .tar or .tar.gz archive")
        return FolderSource(p, max_bytes)

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
                yield name, reason(err)

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
            listing = match(self.names(), classes, aliases, layout, str(self.path), root_name)
        else:
            where, text = self._manifest(manifest)
            listing = from_manifest(text, where, self.names(), classes, aliases)
        listing.not_regular = sorted(self.not_regular)
        return listing

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
    def __init__(self, path: str | os.PathLike, max_bytes: int | None = DEFAULT_MAX_FILE_BYTES) -> None:
        super().__init__(path, max_bytes)
        self._files: dict[str, os.stat_result] | None = None

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

    def read_one(self, name: str) -> bytes:
        # a FIFO or device put here after listing must not hang
        return read_file(self.path / name, self.max_bytes)


class ZipSource(Source):
    def __init__(self, path: str | os.PathLike, max_bytes: int | None = DEFAULT_MAX_FILE_BYTES) -> None:
        super().__init__(path, max_bytes)
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
        info = self._handle().getinfo(name)
        if info.compress_type not in ZIP_METHODS:
            method = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}.get(info.compress_type)
            raise zipfile.BadZipFile(
                f"a {method or f'method {info.compress_type}'}-compressed member is not read (zipfile cannot bound "
                f"what it inflates); re-create the zip {' or '.join(ZIP_METHODS.values())}"
            )
        with self._handle().open(info) as f:
            return read_bounded(f, info.file_size, self.max_bytes)


class TarSource(Source):
    def _damaged(self, err: BaseException) -> DataLayoutError:
        return DataLayoutError(
            f"{self.path} is not a readable .tar/.tar.gz archive, or is truncated "
            f"({type(err).__name__}: {one_line(err)}): re-download or re-create it"
        )

    def _open(self, stream: bool = False) -> tarfile.TarFile:
        """The archive for random access (listing), or as one forward stream (reading: no seek per member)."""
        if stream:
            return tarfile.open(self.path, "r|*", tarinfo=BoundedTarInfo)
        return tarfile.open(self.path, tarinfo=BoundedTarInfo)

    def names(self) -> list[str]:
        try:
            with self._open() as tar:
                members = [m for m in tar if not m.isdir()]
        except ARCHIVE_ERRORS as err:
            raise self._damaged(err) from None
        # a link member is not followed: a symbolic one may point anywhere, and neither can be read from the
        # stream the files are read in
        self.not_regular = [m.name for m in members if not m.isfile()]
        return [m.name for m in members if m.isfile()]

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
            with self._open(stream=True) as tar:
                for member in tar:
                    if member.isfile() and member.name in wanted:
                        file = tar.extractfile(member)
                        assert file is not None  # a regular file's member always has one
                        try:
                            yield member.name, read_bounded(file, member.size, self.max_bytes)
                        except FileTooLarge as err:  # skipped unread: the stream moves past it in blocks
                            yield member.name, reason(err)
        except ARCHIVE_ERRORS as err:
            raise self._damaged(err) from None


def one_line(err: BaseException) -> str:
    """An exception's message on one line (tarfile's, for one, spans several)."""
    return " ".join(str(err).split())


def reason(err: BaseException) -> str:
    """Why a file could not be read, as it is counted and logged."""
    return f"{type(err).__name__}: {one_line(err)}"
