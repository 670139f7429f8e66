"""Bad input ends in one line naming the file or key and the fix, a counted skip or a refusal: never a traceback,
a hang or a silently wrong result. Tiny generated image folders; one parametrized test runs the commands."""

from __future__ import annotations

import io
import multiprocessing
import os
import re
import signal
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fakedetect.data import cache as cache_mod
from fakedetect.data.augment import BatchAugment
from fakedetect.data.cache import Decoded, decode_entries, load_cache
from fakedetect.data.datamodule import ImageDataModule
from fakedetect.data.decode import decode_image
from fakedetect.data.layouts import DataLayoutError, Entry
from fakedetect.data.loaders.decoding import SkippingLoader, StreamDataset, collate_skipping
from fakedetect.data.sources import FolderSource, Source
from fakedetect.losses import BCEWithLogits, FocalLoss, HybridLoss, LossSchedule
from fakedetect.tools.audit.dataset import audit
from fakedetect.utils.errors import ConfigError
from tests.conftest import QUIET, assert_one_line, compose_config, run_command, sideways_jpeg
from tests.test_data import _folder

CLASSES = ("REAL", "FAKE")
GARBAGE = b"\x00not an image at all" * 30
# every FAKE test image of a default `_tree` (4 per class), unreadable
UNREADABLE_TEST_FAKES = {f"test/FAKE/{i}.png": GARBAGE for i in range(4)}


def _png(seed: int, size: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _tree(root: Path, per_class: int = 4, bad: dict[str, bytes] | None = None) -> Path:
    """train/{REAL,FAKE} and test/{REAL,FAKE} of random PNGs, plus `bad` {relative name: bytes}."""
    files = {
        f"{s}/{c}/{i}.png": _png(hash((s, c, i)) % 2**32)
        for s in ("train", "test")
        for c in CLASSES
        for i in range(per_class)
    }
    for name, data in {**files, **(bad or {})}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _module(root: Path, tmp_path: Path, **kwargs: object) -> ImageDataModule:
    """A set-up module with a private cache; val_fraction 0.25 leaves validation images of both classes."""
    defaults = {"cache_dir": str(tmp_path / "cache"), "decode_workers": 1, "val_fraction": 0.25}
    dm = ImageDataModule(str(root), **{**defaults, **kwargs})
    dm.setup()
    return dm


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging (a FIFO read blocks forever)."""

    def fail(*_: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------------- silently wrong results


def test_class_with_only_unreadable_files_stops_naming_the_folder(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", bad=UNREADABLE_TEST_FAKES)
    with pytest.raises(
        DataLayoutError,
        match=r"the test split has no FAKE images: its 4 files in 'test/FAKE' "
        r"are unreadable",
    ):
        _module(root, tmp_path)


def test_val_fraction_that_carves_no_class_is_an_error(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", per_class=2)
    with pytest.raises(DataLayoutError, match=r"val split has no REAL images: data\.val_fraction=0\.1 carves none"):
        _module(root, tmp_path, val_fraction=0.1)
    assert len(_module(root, tmp_path, val_fraction=0.0).splits["val"]) == 0  # no validation, on purpose


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("val_fraction", 1.0),
        ("val_fraction", -0.1),
        ("val_fraction", "0.1"),
        ("test_fraction", 0.0),
        ("test_fraction", 1.5),
        ("batch_size", -1),
        ("batch_size", 0),
        ("eval_batch_size", 2.5),
        ("resolution", 4),
        ("resolution", 32.0),
        ("channels", 2),
        ("loader", "disk"),
        ("train_limit", 1),
        ("test_limit", -5),
        ("max_pixels", 0),
        ("num_workers", -1),
        ("classes", ["REAL"]),
        ("classes", ["real", "REAL"]),
    ],
)
def test_data_arguments_checked_at_construction(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^data\.{key} must be .*, got {re.escape(repr(value))}$"):
        ImageDataModule("never/read", **{key: value})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("translate", -1),
        ("blur_prob", 1.5),
        ("jpeg_quality", [100, 30]),
        ("jpeg_quality", [0, 100]),
        ("flip", "yes"),
        ("resize_scale", [0.0, 1.0]),
        ("rotate", "10"),
    ],
)
def test_augment_arguments_checked_at_construction(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^data\.augment\.{key} must be .*, got {re.escape(repr(value))}$"):
        BatchAugment(**{key: value})


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda: FocalLoss(gamma="abc"), "loss.gamma"),
        (lambda: FocalLoss(gamma=-1.0), "loss.gamma"),
        (lambda: FocalLoss(alpha=1.5), "loss.alpha"),
        (lambda: BCEWithLogits(label_smoothing=1.0), "loss.label_smoothing"),
        (lambda: BCEWithLogits(label_smoothing="0.1"), "loss.label_smoothing"),
        (lambda: BCEWithLogits(pos_weight=0), "loss.pos_weight"),
        (lambda: HybridLoss(beta=-1.0, gamma_r=0.0), "model.reconstruction.beta"),
        (lambda: HybridLoss(ssim_window=4, gamma_r=0.0), "model.reconstruction.ssim_window"),
        (lambda: LossSchedule(freeze=1.0), "model.c_freeze"),
        (lambda: LossSchedule(c_weight=None), "model.c_weight"),
    ],
)
def test_loss_arguments_checked_at_construction(build: Callable[[], object], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key} must be "):
        build()


def test_sixteen_bit_greyscale_is_scaled_not_white() -> None:
    ramp = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 256  # 0 .. 65280
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        assert img.mode == "I;16"  # the file really is 16-bit
    decoded = decode_image(buf.getvalue(), None)
    expected = np.rint(ramp / 257).astype(np.uint8)
    assert decoded.shape == (16, 16, 3)
    assert np.array_equal(decoded[..., 0], expected) and np.array_equal(decoded[..., 2], expected)


def test_exif_orientation_is_applied() -> None:
    """A 20 x 10 image, left half red, stored with orientation 6 (shown rotated 90 degrees clockwise)."""
    upright = decode_image(sideways_jpeg(10, 20), None).astype(int)
    assert upright.shape == (20, 10, 3)  # turned upright: taller than wide
    assert upright[:8, :, 0].mean() > 200 and upright[:8, :, 2].mean() < 50  # the left half is now on top
    assert upright[-8:, :, 2].mean() > 200 and upright[-8:, :, 0].mean() < 50


# -------------------------------------------------------------------------------------- the cache


def test_file_replaced_under_the_same_name_is_decoded_again(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data")
    first = _module(root, tmp_path)
    target = root / "train" / "REAL" / "0.png"
    before = first.decoded().images[first.decoded().names.index("train/REAL/0.png")]
    target.write_bytes(_png(12345))
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later mtime even on a coarse clock
    again = _module(root, tmp_path)
    assert "decode_s" in again.timings and "cache_load_s" not in again.timings
    after = again.decoded().images[again.decoded().names.index("train/REAL/0.png")]
    assert not np.array_equal(before, after)
    assert np.array_equal(after, decode_image(_png(12345), 32))


def _decode_into(folder: Path, root: Path) -> Decoded:
    source = Source.open(root)
    return decode_entries(source, source.list(list(CLASSES)).entries, 32, workers=1, folder=folder)


def _die_while_writing(folder: Path, root: Path) -> None:
    """A writer killed after its arrays, before its metadata (json.dumps is called last)."""
    cache_mod.json.dumps = lambda *_a, **_k: os._exit(9)  # noqa: ARG005 - the child only
    _decode_into(folder, root)


def test_killed_or_corrupt_cache_is_never_trusted(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data")
    dm = _module(root, tmp_path)
    folder = _folder(dm)
    good = dm.decoded()
    dm.statistics()  # taken and cached, to be damaged below
    expected = np.array(good.images)  # a copy: the memory-mapped file is truncated below
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []  # no temporary folder left

    # A writer killed mid-way leaves no cache folder behind, only its private temporary one.
    fresh = tmp_path / "other" / folder.name
    child = multiprocessing.get_context("fork").Process(target=_die_while_writing, args=(fresh, root))
    child.start()
    child.join(60)
    assert child.exitcode == 9 and not fresh.exists() and load_cache(fresh) is None

    # A damaged cache (a truncated array, as an older non-atomic writer could leave) is rebuilt, not a crash.
    images = folder / "images.npy"
    images.write_bytes(images.read_bytes()[:200])
    next((dm.cache_dir / "stats").iterdir()).write_text("{not json")
    again = _module(root, tmp_path)
    assert "decode_s" in again.timings
    assert np.array_equal(again.decoded().images, expected) and again.mean == dm.mean
    assert load_cache(folder) is not None


def _write_many(folder: Path, root: Path, times: int) -> None:
    for _ in range(times):
        _decode_into(folder, root)


def test_concurrent_cache_writers_leave_a_whole_cache(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", per_class=8)
    decoded = _decode_into(tmp_path / "reference" / "key", root)
    folder = tmp_path / "cache" / "key"
    fork = multiprocessing.get_context("fork")
    writers = [fork.Process(target=_write_many, args=(folder, root, 30)) for _ in range(2)]
    for w in writers:
        w.start()
    seen = 0
    while any(w.is_alive() for w in writers):
        loaded = load_cache(folder)
        if loaded is not None:
            seen += 1
            assert np.array_equal(loaded.images, decoded.images) and loaded.names == decoded.names
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert seen > 0 and np.array_equal(load_cache(folder).images, decoded.images)
    assert [p.name for p in folder.parent.iterdir()] == ["key"]  # every temporary folder cleaned up


# ---------------------------------------------------------------------------------- hangs, crashes


def test_fifo_device_link_and_broken_link_are_skipped_not_read(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data")
    os.mkfifo(root / "train" / "REAL" / "x.jpg")
    (root / "train" / "FAKE" / "zero.jpg").symlink_to("/dev/zero")
    (root / "test" / "FAKE" / "gone.png").symlink_to(root / "missing.png")
    specials = ["test/FAKE/gone.png", "train/FAKE/zero.jpg", "train/REAL/x.jpg"]
    with _deadline(60):
        assert Source.open(root).list(list(CLASSES)).not_regular == specials
        dm = _module(root, tmp_path)
        assert len(dm.decoded().labels) == 16 and dm.skipped == []
        assert audit(str(root), list(CLASSES), tmp_path / "audit", workers=1)["not_regular_files"] == specials
        for special in ("train/FAKE/zero.jpg", "train/REAL/x.jpg"):  # one that appears after listing: not read
            with pytest.raises(OSError, match="not a regular file"):
                FolderSource(root).read_one(special)


def test_image_over_max_pixels_is_skipped_or_named(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", bad={"train/FAKE/huge.png": _png(0, size=100)})  # 10,000 pixels
    limit = Image.MAX_IMAGE_PIXELS
    dm = _module(root, tmp_path, max_pixels=5000)
    assert dm.skipped == ["train/FAKE/huge.png"]
    assert limit == Image.MAX_IMAGE_PIXELS  # set per decode call, never left changed
    with pytest.raises(ConfigError, match=r"train/FAKE/huge\.png: ValueError: over data\.max_pixels=5000"):
        _module(root, tmp_path, max_pixels=5000, skip_bad=False, cache_dir=str(tmp_path / "c2"))
    assert _module(root, tmp_path, max_pixels=None, cache_dir=str(tmp_path / "c3")).skipped == []


def test_stream_batch_of_only_unreadable_files_is_skipped_and_counted(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", per_class=1, bad={"train/REAL/a.png": GARBAGE, "train/REAL/b.png": GARBAGE})
    entries = [Entry(n, "train", 0) for n in ("train/REAL/a.png", "train/REAL/b.png", "train/REAL/0.png")]
    dataset = StreamDataset(Source.open(root), entries, np.zeros(3, dtype=np.int64), 16)
    batches = list(SkippingLoader(dataset, batch_size=2, collate_fn=collate_skipping))
    assert [tuple(batch.images.shape) for batch in batches] == [(1, 3, 16, 16)]
    assert dataset.skipped == ["train/REAL/a.png", "train/REAL/b.png"]


def test_stream_class_with_only_unreadable_files_stops_after_the_pass(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", bad=UNREADABLE_TEST_FAKES)
    dm = _module(root, tmp_path, loader="stream", num_workers=0)
    with pytest.raises(
        DataLayoutError,
        match=r"every image of class 1 read from 'test/FAKE' in this split is "
        r"unreadable \(4 files, e\.g\. test/FAKE/",
    ):
        list(dm.test_dataloader())


def test_stream_skip_bad_false_names_the_file_in_one_line(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", bad={"test/FAKE/broken.png": GARBAGE})
    dm = _module(root, tmp_path, loader="stream", num_workers=1, skip_bad=False)
    with pytest.raises(ConfigError, match=r"^cannot decode .*test/FAKE/broken\.png: UnidentifiedImageError") as err:
        list(dm.test_dataloader())
    assert "\n" not in str(err.value)


def test_stream_training_through_lightning_skips_bad_batches(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The loader the Trainer gets (Lightning may rebuild it) still drops the unreadable files."""
    from fakedetect.train import train

    bad = {f"train/FAKE/bad{i}.png": GARBAGE for i in range(6)}
    root = _tree(tmp_path / "data", bad=bad)
    cfg = compose_config(
        "train",
        [
            f"data.root={root}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.loader=stream",
            "data.num_workers=0",
            "data.resolution=16",
            "data.batch_size=2",
            "data.val_fraction=0.25",
            "model=mlp",
            "trainer=cpu",
            "trainer.max_epochs=1",
            *QUIET,
            "logger=csv",
        ],
        tmp_path / "run",
    )
    metrics = train(cfg)
    assert "val/acc" in metrics and "test/acc" in metrics  # validation ran although batches were left out
    skipped = [r.message for r in caplog.records if "skipping a batch whose 2 images are all unreadable" in r.message]
    assert skipped  # this seed's shuffle puts two unreadable files together; the epoch went on past them


def test_tar_cannot_be_streamed_one_line_at_setup(tmp_path: Path) -> None:
    archive = tmp_path / "small.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(_tree(tmp_path / "data"), arcname=".")
    with pytest.raises(
        DataLayoutError,
        match=r"small\.tar\.gz: a \.tar archive cannot be streamed .*"
        r"data\.loader=memory",
    ):
        _module(archive, tmp_path, loader="stream", num_workers=0)


def test_damaged_zip_member_is_a_counted_skip(tmp_path: Path) -> None:
    archive = tmp_path / "data.zip"
    root = _tree(tmp_path / "data")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(root.rglob("*.png")):
            zf.write(f, f.relative_to(root).as_posix())
    blob = bytearray(archive.read_bytes())
    start = blob.index(b"IDAT", blob.index(b"train/REAL/1.png"))  # inside that member's stored data
    blob[start + 8 : start + 40] = bytes(32)
    archive.write_bytes(bytes(blob))
    dm = _module(archive, tmp_path)
    assert dm.skipped == ["train/REAL/1.png"]


def _truncated_tar(tmp_path: Path) -> Path:
    archive = tmp_path / "cifake.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(_tree(tmp_path / "data", per_class=40), arcname=".")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    return archive


def _flat(tmp_path: Path) -> Path:
    """Images with no class folders."""
    for i in range(4):
        (tmp_path / "flat").mkdir(exist_ok=True)
        (tmp_path / "flat" / f"{i}.png").write_bytes(_png(i))
    return tmp_path / "flat"


def _garbage_zip(tmp_path: Path) -> Path:
    (tmp_path / "data.zip").write_bytes(GARBAGE)
    return tmp_path / "data.zip"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda tmp: tmp / "nowhere",
            r"data source not found: .*nowhere; get CIFAKE with `python -m "
            r"fakedetect\.download cifake`, or try .* `data=cifake_sample`",
        ),
        (_garbage_zip, r"data\.zip is not a readable \.zip archive \(File is not a zip file\): re-download"),
        (_truncated_tar, r"cifake\.tar\.gz is not a readable \.tar/\.tar\.gz archive, or is truncated"),
        (_flat, r"flat: no images found in class folders"),
    ],
)
def test_unusable_sources_are_one_line_errors(make: Callable[[Path], Path], message: str, tmp_path: Path) -> None:
    with pytest.raises(DataLayoutError, match=message) as err:
        _module(make(tmp_path), tmp_path)
    assert "\n" not in str(err.value)


def test_missing_exclude_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data\.exclude: no such file .*nothing\.txt"):
        _module(_tree(tmp_path / "data"), tmp_path, exclude=str(tmp_path / "nothing.txt"))


# ------------------------------------------------------------------------------ the commands themselves


@pytest.mark.parametrize(
    ("command", "make_args", "expected"),
    [
        ("train", lambda tmp: [], "`python -m fakedetect.download cifake`"),  # a new user's very first command
        ("train", lambda tmp: [f"data.root={_garbage_zip(tmp)}"], "is not a readable .zip archive"),
        (
            "train",
            lambda tmp: ["loss=focal", "loss.gamma=abc"],
            "loss.gamma must be float (fakedetect.losses.FocalLoss), got 'abc'",
        ),
        ("audit", lambda tmp: [f"data.root={_truncated_tar(tmp)}"], "is not a readable .tar/.tar.gz archive"),
    ],
    ids=["train-no-data", "train-not-a-zip", "train-loss-type", "audit-truncated-tar"],
)
def test_commands_end_in_one_line(
    command: str, make_args: Callable[[Path], list[str]], expected: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CIFAKE", "HYDRA_FULL_ERROR", "PROJECT_ROOT")}
    env |= {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    args = (
        [f"hydra.run.dir={tmp_path / 'run'}", "print_config=false"]
        if command == "train"
        else [f"hydra.run.dir={tmp_path / 'run'}"]
    )
    run = run_command(command, *make_args(tmp_path), *args, cwd=tmp_path, env=env, timeout=300)
    assert_one_line(run, expected)
