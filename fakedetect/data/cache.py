"""The decoded cache: a source's images decoded once, kept as memory-mapped .npy arrays that later runs open
without reading them into memory (so a cache larger than RAM still trains).

Decoding streams the source: batches of at most `batch_files` files or `batch_bytes` bytes are read, decoded in a
process pool and their rows written straight into images.npy in a private folder, renamed into place at the end.
At most `workers + 1` batches are in flight, so peak memory depends on the batch size and the number of workers,
never on the dataset.

A writer owns its private folder through an OS lock (`fakedetect/utils/locks.py`): a stopped writer removes it,
and the folders of writers that were killed (SIGKILL, a crash) are removed by the next writer in the cache folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fakedetect.data.decode import DEFAULT_MAX_PIXELS, DIGEST, BadImageError, check_fit, decode_image, file_digest
from fakedetect.data.layouts import Entry
from fakedetect.data.sources import Source
from fakedetect.utils.errors import ConfigError
from fakedetect.utils.locks import private_folder, remove_abandoned
from fakedetect.utils.processes import worker_pool
from fakedetect.utils.signals import doing

log = logging.getLogger(__name__)

# 2: EXIF orientation applied, 16-bit images scaled, folder identity with sizes and mtimes; 3: files' digests;
# 4: data.fit, JPEG draft decoding, every image's source; 5: 32-bit integer and floating-point images scaled, files
# over data.max_file_bytes skipped; 6: the split folders valid/, validation/, training/ and testing/ (layouts.py's
# SPLIT_FOLDERS), whose images older caches left out
CACHE_VERSION = 6
BATCH_FILES = 256
BATCH_BYTES = 32 << 20
# rows copied at a time when a cache with unreadable files is compacted
COPY_ROWS = 1024


@dataclass
class Decoded:
    """Images as (N, H, W, 3) uint8 (a read-only np.memmap when from a cache folder) with their labels, split
    names, sources and files' digests, and the files that failed."""

    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    names: list[str]
    skipped: list[str]
    digests: np.ndarray  # file_digest of each image's encoded bytes, as DIGEST ASCII
    sources: np.ndarray  # each image's source (generator or real source) name


def cache_key(*parts: object) -> str:
    return hashlib.sha1(json.dumps([CACHE_VERSION, *parts], default=str).encode()).hexdigest()[:16]


def digest_entries(source: Source, entries: list[Entry]) -> np.ndarray:
    """The digests of entries' bytes in entry order, in one pass over the source (for the stream loader, whose
    decoding never holds every file's bytes at once); an unreadable file gets b""."""
    found = {
        name: file_digest(data) if isinstance(data, bytes) else ""
        for name, data in source.read([e.name for e in entries])
    }
    return np.array([found.get(e.name, "") for e in entries], dtype=DIGEST)


def read_batches(
    source: Source, names: Iterable[str], files: int, nbytes: int
) -> Iterator[list[tuple[str, bytes | str]]]:
    """The source's (name, bytes or read error) in its fastest order, in batches of at most `files` files or,
    past the first file, `nbytes` bytes."""
    batch: list[tuple[str, bytes | str]] = []
    size = 0
    for name, data in source.read(names):
        if batch and (len(batch) >= files or size + len(data) > nbytes):
            yield batch
            batch, size = [], 0
        batch.append((name, data))
        size += len(data)
    if batch:
        yield batch


def _decode_batch(args: tuple[list[bytes | str], int, str, int | None]) -> list[tuple[np.ndarray | str, str]]:
    """(image, or the reason it failed; file digest) for each file of a batch, in a pool worker."""
    blobs, resolution, fit, max_pixels = args
    out: list[tuple[np.ndarray | str, str]] = []
    for blob in blobs:
        if isinstance(blob, str):  # the file could not even be read: the reason, from the source
            out.append((blob, ""))
            continue
        try:
            out.append((decode_image(blob, resolution, fit, max_pixels), file_digest(blob)))
        except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file, reported by name
            out.append((f"{type(err).__name__}: {err}", file_digest(blob)))
    return out


def decoded_stream(
    source: Source,
    names: Iterable[str],
    resolution: int,
    fit: str,
    max_pixels: int | None,
    workers: int,
    batch_files: int = BATCH_FILES,
    batch_bytes: int = BATCH_BYTES,
) -> Generator[tuple[str, np.ndarray | str, str], None, None]:
    """(name, image or the reason it failed, digest) for every name, decoded on `workers` processes with at most
    `workers + 1` batches read ahead."""
    work = (resolution, fit, max_pixels)
    batches = read_batches(source, names, batch_files, batch_bytes)
    if workers <= 1:
        for batch in batches:
            yield from _named([n for n, _ in batch], _decode_batch(([b for _, b in batch], *work)))
        return
    with worker_pool(workers) as pool:
        pending: deque[tuple[list[str], Future]] = deque()
        for batch in batches:
            pending.append(([n for n, _ in batch], pool.submit(_decode_batch, ([b for _, b in batch], *work))))
            while len(pending) > workers or (pending and pending[0][1].done()):
                batch_names, done = pending.popleft()
                yield from _named(batch_names, done.result())
        for batch_names, done in pending:
            yield from _named(batch_names, done.result())


def _named(
    names: list[str], results: list[tuple[np.ndarray | str, str]]
) -> Iterator[tuple[str, np.ndarray | str, str]]:
    return ((name, result, digest) for name, (result, digest) in zip(names, results, strict=True))


def decode_entries(
    source: Source,
    entries: list[Entry],
    resolution: int,
    workers: int | None = None,
    skip_bad: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    *,
    fit: str = "squash",
    folder: Path | None = None,
    batch_files: int = BATCH_FILES,
    batch_bytes: int = BATCH_BYTES,
) -> Decoded:
    """Decode entries on every core, in bounded batches, and return them in entry order; unreadable files are
    skipped and listed (or, with skip_bad=False, a BadImageError naming the first). With `folder`, the images
    are written there as the cache (atomically, see `publish`) and returned memory-mapped; without, in memory."""
    check_fit(fit)
    position = {e.name: i for i, e in enumerate(entries)}
    shape = (len(entries), resolution, resolution, 3)
    activity = (
        doing(f"writing the decode cache {folder}", "nothing partial was kept")
        if folder is not None
        else doing(f"decoding {len(entries)} images of {source.path}")
    )
    with activity:
        tmp, owned = writing_folder(folder) if folder is not None else (None, None)
        try:
            rows = Rows(shape, tmp)
            keep = np.zeros(len(entries), dtype=bool)
            digests = np.zeros(len(entries), dtype=DIGEST)
            skipped = []
            stream = decoded_stream(
                source, position, resolution, fit, max_pixels, workers or os.cpu_count() or 1, batch_files, batch_bytes
            )
            for name, result, digest in stream:
                if isinstance(result, str):
                    if not skip_bad:
                        stream.close()
                        raise BadImageError(f"cannot decode {source.path}/{name}: {result}")
                    log.warning("skipping unreadable image %s/%s: %s", source.path, name, result)
                    skipped.append(name)
                    continue
                i = position[name]
                rows.put(i, result)
                keep[i], digests[i] = True, digest
            kept = [e for e, k in zip(entries, keep, strict=True) if k]
            decoded = Decoded(
                images=rows.finish(keep),
                labels=np.array([e.label for e in kept], dtype=np.int64),
                splits=np.array([e.split for e in kept], dtype=str),
                names=[e.name for e in kept],
                skipped=sorted(skipped),
                digests=digests[keep],
                sources=np.array([e.source for e in kept], dtype=str),
            )
            if tmp is not None and folder is not None:  # both or neither
                write_labels(tmp, decoded)
                publish(tmp, folder)
            return decoded
        except OSError as err:  # a full disk while the cache is written: it cannot fall back to memory
            if tmp is None:
                raise
            raise ConfigError(
                f"decode cache {folder}: cannot be written ({err}); free disk space there or point "
                "data.cache_dir at another disk"
            ) from None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if owned is not None:
                os.close(owned)


class Rows:
    """Where decoded rows go, by entry position: an in-memory array, or images.npy in the private folder `tmp`
    (written through a memory map opened per batch of rows, so the rows written never count in this process's
    resident memory)."""

    def __init__(self, shape: tuple[int, ...], tmp: Path | None) -> None:
        self.path = tmp / "rows.npy" if tmp is not None else None
        self.memory = np.empty(shape, np.uint8) if self.path is None else None
        if self.path is not None:
            np.lib.format.open_memmap(self.path, "w+", np.uint8, shape).flush()
        self.pending: dict[int, np.ndarray] = {}

    def put(self, i: int, row: np.ndarray) -> None:
        if self.memory is not None:
            self.memory[i] = row
            return
        self.pending[i] = row
        if len(self.pending) >= BATCH_FILES:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            assert self.path is not None  # rows are pending only on their way to the file
            mapped = np.load(self.path, mmap_mode="r+")
            for i, row in self.pending.items():
                mapped[i] = row
            mapped.flush()
            del mapped
            self.pending = {}

    def finish(self, keep: np.ndarray) -> np.ndarray:
        """The kept rows: the array, or images.npy memory-mapped read-only (copied, COPY_ROWS at a time, without
        the unreadable files' empty rows when there are any)."""
        if self.memory is not None:
            return self.memory if keep.all() else self.memory[keep]
        self.flush()
        assert self.path is not None  # rows not in memory are in the file
        images = self.path.with_name("images.npy")
        if keep.all():
            os.replace(self.path, images)
        else:
            kept = np.flatnonzero(keep)
            rows = np.load(self.path, mmap_mode="r")
            out = np.lib.format.open_memmap(images, "w+", np.uint8, (len(kept), *rows.shape[1:]))
            for start in range(0, len(kept), COPY_ROWS):
                out[start : start + COPY_ROWS] = rows[kept[start : start + COPY_ROWS]]
            out.flush()
            del out, rows
            self.path.unlink()
        return np.load(images, mmap_mode="r")


# the private folders of cache writers in the cache folder, whatever their cache
PRIVATE = ".*.tmp-*"


def writing_folder(folder: Path) -> tuple[Path, int] | tuple[None, None]:
    """A new private folder beside `folder` to write its cache in, owned by this process (its descriptor), after
    removing those that killed writers left; (None, None), with a warning, when the cache folder's parent cannot
    be written: the run then decodes in memory, as it would without a cache."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(folder.parent, PRIVATE)
        return private_folder(folder.parent, f".{folder.name}")
    except OSError as err:
        log.warning("decode cache %s not written by this run: %s", folder, err)
        return None, None


def write_labels(tmp: Path, decoded: Decoded) -> None:
    """Everything but the images; meta.json last, so a writer killed before it leaves an unreadable cache."""
    np.save(tmp / "labels.npy", decoded.labels)
    np.save(tmp / "splits.npy", decoded.splits)
    np.save(tmp / "sources.npy", decoded.sources)
    np.save(tmp / "digests.npy", decoded.digests.astype(DIGEST))
    (tmp / "meta.json").write_text(json.dumps({"names": decoded.names, "skipped": decoded.skipped}))


def publish(tmp: Path, folder: Path) -> None:
    """Rename the private folder `tmp` into place as `folder`.

    A reader sees a whole cache or none, whether the writer is killed or another process writes the same key
    at once (the last rename wins; both hold the same images). A cache that cannot be renamed is a warning.
    """
    stale, owned = None, None
    try:
        if folder.exists():  # an unreadable leftover that load_cache refused, or another writer's: set it aside
            stale, owned = private_folder(folder.parent, f".{folder.name}")
            os.replace(folder, stale / "old")
        os.replace(tmp, folder)
    except OSError as err:  # another writer renamed its copy in at the same moment
        log.warning("decode cache %s not written by this run: %s", folder, err)
    finally:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
        if owned is not None:
            os.close(owned)


def load_cache(folder: Path) -> Decoded | None:
    """The cached decode with its images memory-mapped read-only (never copied into memory), or None when there
    is none or it is unreadable (then it is decoded and written again)."""
    if not folder.exists():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        # memory-mapped: a truncated file fails here, from its header, before anything is read
        arrays = {
            k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in ("images", "labels", "splits", "sources", "digests")
        }
        if len({len(meta["names"]), *(len(a) for a in arrays.values())}) != 1:
            raise ValueError("its files disagree on the number of images")
        images = arrays["images"]
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise ValueError(f"its images are {images.dtype} {images.shape}, not (N, H, W, 3) uint8")
        return Decoded(
            images=images,
            labels=np.array(arrays["labels"]),
            splits=np.array(arrays["splits"]),
            names=list(meta["names"]),
            skipped=list(meta["skipped"]),
            digests=np.array(arrays["digests"]).astype(DIGEST),
            sources=np.array(arrays["sources"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("ignoring the unreadable decode cache %s (%s: %s); decoding again", folder, type(err).__name__, err)
        return None
