"""`python -m fakedetect.download cifake` against a local HTTP server with Range support, serving the sample."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fakedetect.tools.download import SAMPLE, DownloadError, download, fetch_cifake
from tests.conftest import assert_one_line, run_command

ROOT = Path(__file__).resolve().parents[1]
BLOB = SAMPLE.read_bytes()
DIGEST = hashlib.sha256(BLOB).hexdigest()


class RangeHandler(BaseHTTPRequestHandler):
    """Serves BLOB, honouring `Range: bytes=N-` unless told not to; the server's `cut` bytes end the first
    response early."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        server = self.server
        wanted = self.headers.get("Range")
        server.ranges.append(wanted)
        if not server.honour_range:
            wanted = None
        start = int(wanted.removeprefix("bytes=").split("-")[0]) if wanted else 0
        if start >= len(BLOB):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(BLOB)}")
            self.end_headers()
            return
        body = BLOB[start:]
        self.send_response(206 if wanted else 200)
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut, server.cut = server.cut, None
        self.wfile.write(body[:cut] if cut else body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.ranges, httpd.cut, httpd.honour_range = [], None, True
    httpd.url = f"http://127.0.0.1:{httpd.server_port}/archive.zip"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def run_download(*overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and k != "HYDRA_FULL_ERROR"}
    env["KAGGLE_CONFIG_DIR"] = "/nonexistent"
    return run_command("download", "cifake", *overrides, env=env, timeout=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_interrupted_download_resumes(server: ThreadingHTTPServer, tmp_path: Path) -> None:
    dest, cut = tmp_path / "archive.zip", 600_000
    server.cut = cut
    args = [f"url={server.url}", f"dest={dest}", f"sha256={DIGEST}", "timeout=5"]
    line = assert_one_line(run_download(*args))
    assert line.startswith("error: download of") and "run the same command again to resume" in line
    assert not dest.exists() and (tmp_path / "archive.zip.part").stat().st_size == cut
    resumed = run_download(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert server.ranges == [None, f"bytes={cut}-"]
    assert dest.read_bytes() == BLOB and not (tmp_path / "archive.zip.part").exists()


def test_checksum_mismatch_removes_the_file(server: ThreadingHTTPServer, tmp_path: Path) -> None:
    dest = tmp_path / "archive.zip"
    line = assert_one_line(run_download(f"url={server.url}", f"dest={dest}", f"sha256={'0' * 64}"))
    assert line.startswith("error: ") and "is not the expected sha256=" in line and "removed" in line
    assert list(tmp_path.iterdir()) == []


def test_offline_fails_fast_in_one_line(tmp_path: Path) -> None:
    for host in (f"127.0.0.1:{free_port()}", "cifake.invalid"):  # a closed port; a name that never resolves
        start = time.perf_counter()
        line = assert_one_line(run_download(f"url=http://{host}/archive.zip", f"dest={tmp_path / 'a.zip'}"))
        assert time.perf_counter() - start < 30  # mostly the interpreter's start
        assert line.startswith(f"error: cannot reach http://{host}/") and "data=cifake_sample" in line
    assert list(tmp_path.iterdir()) == []


def test_silent_server_times_out(tmp_path: Path) -> None:
    """A host that takes the connection and never answers: the timeout bounds the wait."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        start = time.perf_counter()
        with pytest.raises(DownloadError, match=r"cannot reach .*\(timed out\)"):
            download(f"http://127.0.0.1:{silent.getsockname()[1]}/archive.zip", tmp_path / "a.zip", timeout=1)
    assert time.perf_counter() - start < 5


def test_whole_part_file_is_finished_without_downloading(server: ThreadingHTTPServer, tmp_path: Path) -> None:
    """Killed after the last byte but before the rename: the server answers 416 and the part is kept."""
    dest = tmp_path / "archive.zip"
    (tmp_path / "archive.zip.part").write_bytes(BLOB)
    download(server.url, dest, DIGEST)
    assert dest.read_bytes() == BLOB and server.ranges == [f"bytes={len(BLOB)}-"]
    fetch_cifake(dest, server.url, DIGEST, None, 5)  # already there: checked, not fetched again
    assert len(server.ranges) == 1


def test_kaggle_credentials_without_the_package_fall_back_to_url(
    server: ThreadingHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "not-a-key")
    monkeypatch.setitem(sys.modules, "kaggle", None)  # `import kaggle...` raises ImportError
    with caplog.at_level(logging.INFO, logger="fakedetect.tools.download"):
        fetch_cifake(tmp_path / "archive.zip", server.url, DIGEST, "owner/dataset", 5)
    assert "kaggle package is not installed" in caplog.text
    assert (tmp_path / "archive.zip").read_bytes() == BLOB


def test_server_without_range_starts_over(server: ThreadingHTTPServer, tmp_path: Path) -> None:
    """A partial file is never extended with a whole body sent from the first byte."""
    server.honour_range = False
    (tmp_path / "archive.zip.part").write_bytes(BLOB[:1000])
    download(server.url, tmp_path / "archive.zip", DIGEST)
    assert (tmp_path / "archive.zip").read_bytes() == BLOB


def test_bad_dest_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    for dest, message in ((tmp_path, "is a folder"), (tmp_path / "file" / "archive.zip", "cannot create")):
        with pytest.raises(DownloadError, match=message):
            fetch_cifake(dest, "http://cifake.invalid/archive.zip", None, None, 1)
