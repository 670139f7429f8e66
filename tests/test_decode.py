"""Decode policy (fits, JPEG draft mode, EXIF, HEIC) and the memory-mapped decode cache written in bounded batches.
Small images generated in tmp_path; no CIFAKE."""

from __future__ import annotations

import io
import logging
import random
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fakedetect.benchmarks.decode import cache_memory, decode_speed, generate
from fakedetect.data import cache as cache_mod
from fakedetect.data.cache import decode_entries, decoded_stream, load_cache, read_batches
from fakedetect.data.decode import BadImageError, decode_image, open_image
from fakedetect.data.layouts import IMAGE_SUFFIXES, Entry
from fakedetect.data.sources import FolderSource
from fakedetect.utils.errors import ConfigError
from tests.conftest import assert_one_line, run_command, sideways_jpeg


def _coded(width: int, height: int) -> np.ndarray:
    """An RGB image whose every pixel is distinct: red = x, green = y, blue = both, so a window is traceable."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x % 256, y % 256, (x * 7 + y * 13) % 256], axis=-1).astype(np.uint8)


def _encode(array: np.ndarray, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kwargs)
    return buf.getvalue()


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth content with mild noise: what a camera JPEG holds (pure noise would make any resampling differ)."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(6 * x) + y, np.cos(5 * y) * x, x * y], axis=-1)
    noise = np.random.default_rng(seed).normal(0, 0.03, (height, width, 3))
    return ((base - base.min()) / np.ptp(base) * 230 + 10 + noise * 255).clip(0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ fits


def test_fits_geometry() -> None:
    array = _coded(60, 40)
    data = _encode(array)
    assert np.array_equal(decode_image(data, 20, "center_crop"), array[10:30, 20:40])  # native pixels, centred
    assert np.array_equal(decode_image(data, 20, "random_crop"), array[10:30, 20:40])  # no rng: the centre
    squash = np.asarray(Image.fromarray(array).resize((20, 20), Image.Resampling.BICUBIC))
    assert np.array_equal(decode_image(data, 20, "squash"), squash)
    # resize_crop: short side 40 -> 20, then the centre square (done in one step: rounding may differ by 1)
    expected = np.asarray(Image.fromarray(array).resize((30, 20), Image.Resampling.BICUBIC))[:, 5:25]
    assert np.abs(decode_image(data, 20, "resize_crop").astype(int) - expected).max() <= 1
    assert decode_image(data, None, "resize_crop").shape == (40, 60, 3)  # no resolution: as it is


def test_random_crop_is_a_native_window_placed_by_the_rng() -> None:
    array = _coded(60, 40)
    data = _encode(array)
    corners = set()
    for seed in range(8):
        crop = decode_image(data, 16, "random_crop", rng=random.Random(seed))
        left, top = int(crop[0, 0, 0]), int(crop[0, 0, 1])  # the pixel codes say where the window is
        assert np.array_equal(crop, array[top : top + 16, left : left + 16])
        corners.add((left, top))
    assert len(corners) > 1
    assert np.array_equal(
        decode_image(data, 16, "random_crop", rng=random.Random(3)),
        decode_image(data, 16, "random_crop", rng=random.Random(3)),
    )


def test_crop_fits_scale_a_small_image_up_first() -> None:
    data = _encode(_coded(12, 8))
    centred = decode_image(data, 16, "resize_crop")  # short side 8 -> 16, then the centre square
    assert centred.shape == (16, 16, 3)
    assert np.array_equal(decode_image(data, 16, "center_crop"), centred)
    assert np.array_equal(decode_image(data, 16, "random_crop"), centred)
    # with an rng the window moves along the long side (24 px after scaling)
    windows = {decode_image(data, 16, "random_crop", rng=random.Random(seed)).tobytes() for seed in range(10)}
    assert len(windows) > 1
    assert decode_image(data, 16, "squash").shape == (16, 16, 3)


def test_unknown_fit_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_encode(_coded(8, 8)))
    with pytest.raises(ConfigError, match=r"^data\.fit=crop is not a fit; use one of squash, center_crop, "):
        decode_entries(FolderSource(tmp_path), [Entry("a.png", "", 0)], 8, fit="crop")


# ------------------------------------------------------------------------------- draft, EXIF, HEIC


@pytest.mark.parametrize("fit", ["squash", "resize_crop"])
def test_draft_decode_matches_the_full_decode(fit: str) -> None:
    data = _encode(_photo(1024, 640), "JPEG", quality=92)
    drafted = decode_image(data, 64, fit).astype(int)
    full = decode_image(data, 64, fit, draft=False).astype(int)
    assert drafted.shape == full.shape == (64, 64, 3)
    assert np.abs(drafted - full).mean() < 2.0 and np.abs(drafted - full).max() < 40
    assert not np.array_equal(drafted, full)  # the draft path really ran: libjpeg's scaled DCT differs slightly


@pytest.mark.parametrize(
    ("width", "height", "side"),
    [(1024, 640, 64), (700, 300, 100), (799, 200, 100), (640, 1024, 224), (300, 300, 150), (299, 600, 150)],
)
def test_draft_keeps_both_sides_at_least_the_resolution(width: int, height: int, side: int) -> None:
    data = _encode(_photo(width, height), "JPEG", quality=80)
    with open_image(data, draft=side) as img:
        assert min(img.size) >= side
        reduced = min(width, height) >= 2 * side
        assert (img.size != (width, height)) == reduced


def test_exif_rotation_after_draft_is_upright() -> None:
    """Orientation 6 (shown turned 90 degrees clockwise): stored left half red, so upright the top is red."""
    data = sideways_jpeg(480, 960)
    with open_image(data, draft=32) as img:
        assert img.size == (60, 120)  # decoded at 1/8, then turned upright: taller than wide
    for fit in ("squash", "resize_crop"):
        for draft in (True, False):
            upright = decode_image(data, 32, fit, draft=draft).astype(int)
            top, bottom = upright[:8], upright[-8:]
            assert top[..., 0].mean() > 200 and top[..., 2].mean() < 50, (fit, draft)
            assert bottom[..., 2].mean() > 200 and bottom[..., 0].mean() < 50, (fit, draft)


def test_heic_is_read() -> None:
    assert {".heic", ".heif"} <= IMAGE_SUFFIXES
    array = _photo(96, 64)
    data = _encode(array, "HEIF", quality=95)
    assert data[4:12] == b"ftypheic"
    decoded = decode_image(data, None)
    assert decoded.shape == (64, 96, 3) and np.abs(decoded.astype(int) - array).mean() < 6
    assert decode_image(data, 32, "resize_crop").shape == (32, 32, 3)
    with pytest.raises(ValueError, match=r"over data\.max_pixels=1000, a possible decompression bomb"):
        decode_image(data, 32, max_pixels=1000)  # refused from its header, as any other format


def test_without_pillow_heif_heic_is_one_reason_and_other_formats_decode(tmp_path: Path) -> None:
    """A machine where pillow-heif does not import (an older Pillow) still decodes everything else, and a HEIC file
    is unreadable with the cause named, as any bad file is skipped and counted by it."""
    (tmp_path / "a.heic").write_bytes(_encode(_photo(96, 64), "HEIF", quality=95))
    (tmp_path / "b.png").write_bytes(_encode(_photo(96, 64)))
    script = (
        "import sys; sys.modules['pillow_heif'] = None\n"
        "from pathlib import Path\n"
        "from fakedetect.data.decode import decode_image\n"
        f"print(decode_image(Path({str(tmp_path / 'b.png')!r}).read_bytes(), 32).shape)\n"
        "try:\n"
        f"    decode_image(Path({str(tmp_path / 'a.heic')!r}).read_bytes(), 32)\n"
        "except ValueError as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    shape, reason = done.stdout.strip().splitlines()
    assert shape == "(32, 32, 3)"
    assert reason.startswith("HEIC/HEIF needs pillow-heif, which does not import here")


def test_heic_orientation_is_not_applied_twice() -> None:
    """libheif turns a HEIC upright from its container and pillow-heif resets the EXIF tag to 1: decoding must
    not rotate it again by that EXIF orientation."""
    array = np.zeros((10, 20, 3), np.uint8)
    array[:, :10, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(array, "HEIF", quality=95, exif=exif)
    with Image.open(io.BytesIO(data)) as img:
        shown = img.size
    assert decode_image(data, None).shape[1::-1] == shown


# ------------------------------------------------------------------------------------- the cache


def _tree(root: Path, bad: tuple[str, ...] = ()) -> list[Entry]:
    """Eight images of several sizes, formats (HEIC too) and orientations in two sources, plus `bad` garbage."""
    entries = []
    for i in range(8):
        source, label = ("camera", 0) if i % 2 else ("gen", 1)
        width, height = (40 + 9 * i, 30 + 13 * i) if i % 3 else (30 + 13 * i, 40 + 9 * i)
        fmt, suffix = [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("HEIF", "heic")][i % 4]
        name = f"{source}/{i}.{suffix}"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_encode(_photo(width, height, seed=i), fmt))
        entries.append(Entry(name, "train" if i < 6 else "test", label, source))
    for j, name in enumerate(bad):
        (root / name).write_bytes(b"not an image" * 10)
        entries.insert(2 + 3 * j, Entry(name, "train", 0, "camera"))
    return entries


def test_cache_round_trip_is_memory_mapped(tmp_path: Path) -> None:
    entries = _tree(tmp_path / "data")
    source = FolderSource(tmp_path / "data")
    folder = tmp_path / "cache" / "key"
    in_memory = decode_entries(source, entries, 24, workers=1, fit="resize_crop")
    written = decode_entries(source, entries, 24, workers=2, fit="resize_crop", folder=folder, batch_files=3)
    loaded = load_cache(folder)
    for decoded in (written, loaded):
        assert isinstance(decoded.images, np.memmap) and not decoded.images.flags.writeable
        assert np.array_equal(decoded.images, in_memory.images) and decoded.names == in_memory.names
        assert decoded.sources.tolist() == ["gen", "camera"] * 4 == in_memory.sources.tolist()
        assert decoded.splits.tolist() == ["train"] * 6 + ["test"] * 2
        assert np.array_equal(decoded.digests, in_memory.digests) and np.array_equal(decoded.labels, in_memory.labels)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["key"]  # the private folder was renamed into place
    assert sorted(p.name for p in folder.iterdir()) == [
        "digests.npy",
        "images.npy",
        "labels.npy",
        "meta.json",
        "sources.npy",
        "splits.npy",
    ]


def test_unreadable_files_are_dropped_from_the_written_cache(tmp_path: Path) -> None:
    entries = _tree(tmp_path / "data", bad=("gen/bad1.png", "camera/bad2.jpg"))
    source = FolderSource(tmp_path / "data")
    good = [e for e in entries if "bad" not in e.name]
    written = decode_entries(source, entries, 16, workers=1, folder=tmp_path / "c" / "k", batch_files=2)
    assert written.skipped == ["camera/bad2.jpg", "gen/bad1.png"]
    assert written.names == [e.name for e in good] and len(written.images) == 8
    assert np.array_equal(load_cache(tmp_path / "c" / "k").images, decode_entries(source, good, 16, workers=1).images)
    assert sorted(p.name for p in (tmp_path / "c" / "k").iterdir())[:2] == ["digests.npy", "images.npy"]
    with pytest.raises(BadImageError, match=r"cannot decode .*gen/bad1\.png: UnidentifiedImageError"):
        decode_entries(source, entries, 16, workers=1, skip_bad=False, folder=tmp_path / "c" / "strict")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["k"]  # nothing written, nothing left behind


def test_cache_that_cannot_be_written_decodes_in_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    entries = _tree(tmp_path / "data")
    (tmp_path / "a_file").write_text("")
    with caplog.at_level(logging.WARNING, logger="fakedetect.data.cache"):
        decoded = decode_entries(
            FolderSource(tmp_path / "data"), entries, 16, workers=1, folder=tmp_path / "a_file" / "key"
        )
    assert len(decoded.images) == 8 and not isinstance(decoded.images, np.memmap)
    assert any("not written by this run" in r.getMessage() for r in caplog.records)


def test_full_disk_while_writing_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = _tree(tmp_path / "data")

    def full(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_mod.np.lib.format, "open_memmap", full)
    with pytest.raises(
        ConfigError,
        match=r"^decode cache .*/key: cannot be written \(\[Errno 28\] No space left on "
        r"device\); free disk space there or point data\.cache_dir",
    ):
        decode_entries(FolderSource(tmp_path / "data"), entries, 16, workers=1, folder=tmp_path / "c" / "key")
    assert list((tmp_path / "c").iterdir()) == []


class _CountingSource(FolderSource):
    """Counts the files read, so a test can see how far reading runs ahead of decoding."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads = 0

    def read(self, names: Iterable[str]) -> Iterator[tuple[str, bytes | str]]:
        for item in super().read(names):
            self.reads += 1
            yield item


def test_decoding_reads_bounded_batches_ahead(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    sizes = [300, 200, 5000, 100, 100, 100, 100, 7000, 100]  # bytes of each file
    for i, n in enumerate(sizes):
        (root / f"{i}.bin").write_bytes(b"x" * n)
    batches = list(read_batches(FolderSource(root), [f"{i}.bin" for i in range(9)], files=3, nbytes=1000))
    assert [[name for name, _ in b] for b in batches] == [
        ["0.bin", "1.bin"],
        ["2.bin"],
        ["3.bin", "4.bin", "5.bin"],
        ["6.bin"],
        ["7.bin"],
        ["8.bin"],
    ]
    # 40 images, batches of 2, 2 workers: reading never runs more than (workers + 1) batches ahead of the output
    names = [f"{i}.png" for i in range(40)]
    for i, name in enumerate(names):
        (root / name).write_bytes(_encode(_coded(8 + i % 5, 8)))
    source = _CountingSource(root)
    ahead = []
    for got, (name, image, _) in enumerate(
        decoded_stream(source, names, 8, "squash", None, workers=2, batch_files=2), start=1
    ):
        assert image.shape == (8, 8, 3) and name == names[got - 1]
        ahead.append(source.reads - got)
    assert max(ahead) <= (2 + 1) * 2 + 2 and source.reads == 40


def test_decode_bench_generates_times_and_measures_memory(tmp_path: Path) -> None:
    root = tmp_path / "big"
    assert generate(str(root), count=3, size=96, workers=1)["files"] == 3
    assert sorted(p.name for p in root.iterdir()) == ["00000.jpg", "00001.jpg", "00002.jpg"]
    speed = decode_speed(str(root), 32, "resize_crop", repeats=2)
    assert speed["images"] == 3 and all(
        len(speed[k]["passes"]) == 2 and speed[k]["median_images_s"] > 0 for k in ("draft", "no_draft")
    )
    memory = cache_memory(str(root), 16, "squash", workers=1)
    assert memory["images"] == 3 and memory["cache_gb"] > 3 * 16 * 16 * 3 / 1e9
    assert memory["peak_rss_mb"] >= memory["peak_rss_main_mb"] > 0
    (tmp_path / "png").mkdir()
    (tmp_path / "png" / "a.png").write_bytes(_encode(_coded(8, 8)))
    with pytest.raises(ConfigError, match=r"^root=.*/png: no \.jpeg \.jpg files in it"):
        decode_speed(str(tmp_path / "png"), 32, "squash", 1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["root=/no/such/folder"], "data source not found: /no/such/folder"),
        (["root=.", "mode=fast"], "mode=fast is not a mode"),
        (["root=.", "fit=crop"], "fit=crop is not a fit"),
    ],
)
def test_decode_bench_bad_arguments_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    done = run_command("decode_bench", *args, f"hydra.run.dir={tmp_path}")
    assert message in assert_one_line(done)
