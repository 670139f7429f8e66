"""Fetch CIFAKE, for machines with internet access (the `python -m fakedetect.download cifake [dest=PATH]` command).

Kaggle's API when credentials and the `kaggle` package exist, else `url` (resumed from a `.part` file with an HTTP
Range request), then checked against `sha256`. `python -m fakedetect.download sample sample.source=FULL_CIFAKE`
rebuilds the small sample shipped in the package, byte for byte, so that it is no mystery blob.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from fakedetect import package_file
from fakedetect.data.sources import Source
from fakedetect.data.splits import stratified_sample
from fakedetect.utils.errors import ConfigError
from fakedetect.utils.files import atomic_path
from fakedetect.utils.signals import doing

log = logging.getLogger(__name__)

SAMPLE = Path(package_file("data/sample/cifake_sample.zip"))
CHUNK = 1 << 16
OFFLINE_HINT = "without internet, train on the packaged sample: python -m fakedetect.train data=cifake_sample"


class DownloadError(ConfigError):
    """The data could not be fetched, or is not what was expected; the message says what to do next."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, expected: str | int | None) -> None:
    """Remove `path` and stop when its SHA-256 is not `expected` (None: only log it, so that it can be pinned)."""
    got = sha256_of(path)
    if expected is None:
        log.info("%s: sha256 %s (pin it with sha256=...)", path, got)
        return
    if got != str(expected).lower():
        path.unlink()
        raise DownloadError(
            f"{path}: SHA-256 {got} is not the expected sha256={expected}; the file was removed "
            "(run again, or check url and sha256)"
        )
    log.info("%s: SHA-256 checked", path)


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 10.0) -> Path:
    """Fetch `url` into `dest` through `dest.part`, resuming a partial one; `timeout` bounds connecting and every
    read, so an unreachable host fails in seconds."""
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "fakedetect", **({"Range": f"bytes={start}-"} if start else {})}
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as err:
        if err.code == 416 and start:  # the part is already whole (killed before the rename), or stale
            total = err.headers.get("Content-Range", "").rpartition("/")[2]
            if total != str(start):
                part.unlink()
                raise DownloadError(
                    f"{url}: the partial {part} does not fit the file on the server and was "
                    "removed; run again to start over"
                ) from None
        else:
            raise DownloadError(f"{url}: HTTP {err.code} {err.reason} (check url=...); {OFFLINE_HINT}") from None
    except ValueError as err:
        raise DownloadError(f"url={url} is not a URL ({err})") from None
    except (URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"cannot reach {url} ({reason}); {OFFLINE_HINT}, or put the archive at {dest}") from None
    else:
        with response, doing(f"downloading {url} into {part}", f"{part} is kept: the same command resumes it"):
            _receive(response, part, start, url)
    part.replace(dest)
    verify(dest, sha256)
    log.info("downloaded %s (%.1f MB)", dest, dest.stat().st_size / 1e6)
    return dest


def _receive(response: http.client.HTTPResponse, part: Path, start: int, url: str) -> None:
    if start and response.status != 206:  # the server ignores Range: start over
        log.info("%s does not resume; starting over", url)
        start = 0
    elif start:
        log.info("resuming %s at %.1f MB", part, start / 1e6)
    length = response.headers.get("Content-Length")
    total = start + int(length) if length else None
    done = start
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    try:
        out = part.open("ab" if start else "wb")
    except OSError as err:
        raise DownloadError(f"cannot write {part} ({err.strerror}); choose another dest=...") from None
    try:
        with out, Progress(*columns) as progress:
            task = progress.add_task(part.name.removesuffix(".part"), total=total, completed=start)
            while block := response.read(CHUNK):
                out.write(block)
                done += len(block)
                progress.update(task, completed=done)
    except (OSError, http.client.HTTPException) as err:
        raise DownloadError(
            f"download of {url} stopped at {done:,} bytes ({err or type(err).__name__}); "
            "run the same command again to resume"
        ) from None
    if total is not None and done != total:
        raise DownloadError(
            f"download of {url} stopped at {done:,} of {total:,} bytes; run the same command again to resume"
        )


def kaggle_credentials() -> bool:
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    return (Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")) / "kaggle.json").is_file()


def kaggle_download(dataset: str, dest: Path) -> bool:
    """Kaggle's own client, when installed; False when it is not, so that the caller falls back to a URL."""
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        log.info(
            "Kaggle credentials found, but the kaggle package is not installed (pip install kaggle); using url instead"
        )
        return False
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        try:
            api = KaggleApi()
            api.authenticate()
            api.dataset_download_files(dataset, path=tmp, quiet=False)
        except Exception as err:  # noqa: BLE001 - the client's own errors, reported as one line
            raise DownloadError(
                f"Kaggle download of {dataset} failed ({err}); check ~/.kaggle/kaggle.json, or "
                "set kaggle=null to use url"
            ) from None
        (Path(tmp) / f"{dataset.rpartition('/')[2]}.zip").replace(dest)
    return True


def fetch_cifake(dest: Path, url: str | None, sha256: str | None, kaggle: str | None, timeout: float) -> Path:
    """CIFAKE at `dest`, fetched only when it is not there yet."""
    if dest.is_dir():
        raise DownloadError(f"dest={dest} is a folder; name the file to write, e.g. dest={dest / 'archive.zip'}")
    if dest.exists():
        log.info("%s is already there (remove it to download again)", dest)
        verify(dest, sha256)
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create the folder of dest={dest} ({err.strerror}); choose another") from None
    if kaggle and kaggle_credentials() and kaggle_download(kaggle, dest):
        verify(dest, sha256)
        return dest
    if not url:
        raise DownloadError(f"no Kaggle credentials and no url=... to download CIFAKE from; {OFFLINE_HINT}")
    return download(url, dest, sha256, timeout)


def build_sample(
    source: str | os.PathLike,
    dest: Path = SAMPLE,
    train_per_class: int = 600,
    test_per_class: int = 200,
    classes: tuple[str, ...] = ("REAL", "FAKE"),
    seed: int = 0,
) -> Path:
    """A stratified subset of a full CIFAKE as a zip in its layout, identical for the same source and arguments:
    stored (JPEGs are not re-encoded nor recompressed), sorted, with fixed timestamps."""
    listing = Source.open(source).list(list(classes))
    picked = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for e in stratified_sample(listing.split(split), per_class * len(classes), seed):
            picked[e.name] = f"{split}/{classes[e.label]}/{PurePosixPath(e.name).name}"
    blobs = {}
    for name, blob in Source.open(source).read(picked):
        if isinstance(blob, str):  # the sample must hold exactly the picked files
            raise DownloadError(f"sample.source={source}: cannot read {name} ({blob}); re-download the full CIFAKE")
        blobs[picked[name]] = blob
    dest.parent.mkdir(parents=True, exist_ok=True)
    with (
        doing(f"writing the sample {dest}", f"{dest} was left as it was"),
        atomic_path(dest) as tmp,
        zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as out,
    ):
        for name in sorted(blobs):
            out.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), blobs[name])
    log.info("%s: %d images, %.2f MB, sha256 %s", dest, len(blobs), dest.stat().st_size / 1e6, sha256_of(dest))
    return dest
