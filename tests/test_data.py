"""The data package: sources, decoding and its cache, splits, both loaders, augmentation and normalization.

Real CIFAKE is used through one small stratified subset (the same one as the training tests, so the
session cache decodes it once); file-format and bad-input cases use tiny folders written with PIL.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fakedetect.data.augment import BatchAugment, random_flip, random_translate
from fakedetect.data.batch import Batch
from fakedetect.data.datamodule import ImageDataModule
from fakedetect.data.decode import BadImageError, decode_image
from fakedetect.data.layouts import DataLayoutError
from fakedetect.data.loaders import decoded as decoded_mod
from fakedetect.data.loaders.decoded import cache_folder
from fakedetect.data.loaders.memory import DeviceBatches
from fakedetect.data.loaders.order import EpochOrder
from fakedetect.data.sources import FolderSource, Source, TarSource, ZipSource
from fakedetect.data.splits import stratified_split
from fakedetect.data.statistics import channel_stats
from fakedetect.modules import Detector
from fakedetect.nets import MLP

# The subset conftest's training tests use (with the default seed 42 and 32 px): one decode per session.
SUBSET = {"train_limit": 2000, "test_limit": 1000}
CLASSES = ("REAL", "FAKE")
PER_GROUP = 6  # CIFAKE members taken from each of train/REAL, train/FAKE, test/REAL, test/FAKE

Members = dict[str, bytes]  # "split/CLASS/file.jpg" -> the archive's own JPEG bytes


# ----------------------------------------------------------------------------------------------- helpers


def _digests(images: np.ndarray) -> list[str]:
    """One content hash per image, to compare splits by what they hold."""
    return [hashlib.sha1(x.tobytes()).hexdigest() for x in images]


def _write_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Write {relative name: bytes} under root and return root."""
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _encode(array: np.ndarray, fmt: str, mode: str | None = None, **params: object) -> bytes:
    """Encode a uint8 array (H, W[, C]) as an image file of the given PIL format, converted to `mode`."""
    img = Image.fromarray(array)
    if mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE)  # exact colours, no dithering to a web palette
    elif mode is not None and img.mode != mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _random_png(rng: np.random.Generator, size: int = 12) -> bytes:
    return _encode(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "PNG")


def _split_files(rng: np.random.Generator, per_class: int) -> dict[str, bytes]:
    """`per_class` random PNGs in each of train/{REAL,FAKE} and test/{REAL,FAKE}, by relative name."""
    return {
        f"{split}/{cls}/{i}.png": _random_png(rng)
        for split in ("train", "test")
        for cls in CLASSES
        for i in range(per_class)
    }


def _split_folder(root: Path, per_class: int = 4, seed: int = 0) -> Path:
    """A tiny train/{REAL,FAKE}, test/{REAL,FAKE} folder of random PNGs."""
    return _write_tree(root, _split_files(np.random.default_rng(seed), per_class))


def _module(root: Path | str, cache: Path, **kwargs: object) -> ImageDataModule:
    """A set-up data module on CPU with a private cache (decode_workers=1: the tiny sets need no pool).

    val_fraction 0.25, so that the 4 train images per class of `_split_folder` leave one of each for validation.
    """
    kwargs.setdefault("decode_workers", 1)
    kwargs.setdefault("val_fraction", 0.25)
    dm = ImageDataModule(str(root), cache_dir=str(cache), **kwargs)
    dm.setup()
    return dm


def _listing_by_name(source: Source, prefix: str = "") -> dict[str, tuple[str, int]]:
    """{lower-cased name without prefix: (split, label)} of a source's listing."""
    return {e.name[len(prefix) :].lower(): (e.split, e.label) for e in source.list(list(CLASSES)).entries}


def _batches(loader: Iterable[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
    """All batches of a loader, concatenated: images and labels."""
    images, labels, _, _ = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


def _folder(dm: ImageDataModule) -> Path:
    return cache_folder(dm.config, Source.open(dm.root))


def _detector(dm: ImageDataModule) -> Detector:
    """A detector holding `dm`'s train statistics, as a fit hands them over."""
    model = Detector(MLP(hidden=[8]), torch.nn.BCEWithLogitsLoss(), torch.optim.Adam)
    model.set_statistics(dm.mean, dm.std)
    return model


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cifake_dm(cifake_path: Path, cache_dir: Path) -> ImageDataModule:
    """The shared CIFAKE subset, decoded (or loaded from the session cache) and split."""
    dm = ImageDataModule(str(cifake_path), cache_dir=str(cache_dir), **SUBSET)
    dm.setup()
    return dm


@pytest.fixture(scope="session")
def cifake_members(cifake_path: Path) -> Members:
    """The first few members of every split/class of the real archive, as their raw JPEG bytes."""
    out: Members = {}
    counts: dict[str, int] = {}
    with tarfile.open(cifake_path, mode="r|gz") as tar:
        for member in tar:
            group = member.name.rsplit("/", 1)[0]
            if not member.isfile() or counts.get(group, 0) >= PER_GROUP:
                continue
            counts[group] = counts.get(group, 0) + 1
            out[member.name] = tar.extractfile(member).read()
    assert sorted(counts) == ["test/FAKE", "test/REAL", "train/FAKE", "train/REAL"]
    return out


@pytest.fixture
def cifake_folder(cifake_members: Members, tmp_path: Path) -> Path:
    """The CIFAKE members as a plain folder in CIFAKE's own layout."""
    return _write_tree(tmp_path / "cifake_small", cifake_members)


# ------------------------------------------------------------------------------------ 1. split (CIFAKE)


def test_cifake_splits_disjoint_stratified_and_sized(cifake_dm: ImageDataModule) -> None:
    splits = cifake_dm.splits
    assert cifake_dm.split_sizes == {"train": 1800, "val": 200, "test": 1000}
    for split, part in splits.items():
        images = cifake_dm.split_images(split)
        assert images.shape == (len(part.labels), 32, 32, 3) and images.dtype == np.uint8
        assert part.labels.dtype == np.int64

    # Disjoint, and together exactly the decoded subset (the 3000 subset images are all distinct).
    decoded = cifake_dm.decoded()
    assert len(set(_digests(decoded.images))) == len(decoded.images) == 3000
    hashes = {k: set(_digests(cifake_dm.split_images(k))) for k in splits}
    assert not hashes["train"] & hashes["val"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["val"] & hashes["test"]
    # val is carved from train only; test is the archive's own test split.
    assert hashes["test"] == set(_digests(decoded.images[decoded.splits == "test"]))
    assert hashes["train"] | hashes["val"] == set(_digests(decoded.images[decoded.splits == "train"]))

    # Stratified: per class, val holds val_fraction of the class; balance within one image of train's.
    train_labels, val_labels = splits["train"].labels, splits["val"].labels
    for c in (0, 1):
        total = (train_labels == c).sum() + (val_labels == c).sum()
        assert (val_labels == c).sum() == round(cifake_dm.val_fraction * total)
    assert abs(val_labels.sum() - len(val_labels) * train_labels.mean()) <= 1
    assert splits["test"].labels.sum() == 500  # test_limit is stratified too


def test_cifake_split_seeded(cifake_dm: ImageDataModule) -> None:
    """The seed alone decides the carve: same seed, same split; another seed, another split."""
    labels = cifake_dm.decoded().labels
    labels = labels[cifake_dm.decoded().splits == "train"]
    a_kept, a_val = stratified_split(labels, 0.1, seed=42)
    b_kept, b_val = stratified_split(labels, 0.1, seed=42)
    c_kept, c_val = stratified_split(labels, 0.1, seed=7)
    assert np.array_equal(a_val, b_val) and np.array_equal(a_kept, b_kept)
    assert not np.array_equal(a_val, c_val)
    assert len(a_val) == len(c_val) == 200
    assert np.intersect1d(a_kept, a_val).size == 0 and len(a_kept) + len(a_val) == len(labels)


def test_module_split_seeded(cifake_folder: Path, tmp_path: Path) -> None:
    """Two modules with one seed split identically; another seed carves another val set."""
    a = _module(cifake_folder, tmp_path / "c", resolution=32, val_fraction=0.5, seed=1)
    b = _module(cifake_folder, tmp_path / "c", resolution=32, val_fraction=0.5, seed=1)
    c = _module(cifake_folder, tmp_path / "c", resolution=32, val_fraction=0.5, seed=2)
    for split in ("train", "val", "test"):
        assert np.array_equal(a.split_images(split), b.split_images(split))
        assert np.array_equal(a.splits[split].labels, b.splits[split].labels)
    assert set(_digests(a.split_images("val"))) != set(_digests(c.split_images("val")))
    assert set(_digests(a.split_images("test"))) == set(_digests(c.split_images("test")))  # the archive's test split
    assert len(c.splits["val"].labels) == PER_GROUP  # half of each class's PER_GROUP train images


# ----------------------------------------------------------------------------------------- 2. the cache


def test_cache_reused_with_identical_arrays(cifake_dm: ImageDataModule, cifake_path: Path, cache_dir: Path) -> None:
    again = ImageDataModule(str(cifake_path), cache_dir=str(cache_dir), **SUBSET)
    again.setup()
    assert "cache_load_s" in again.timings and "decode_s" not in again.timings
    assert (_folder(again) / "images.npy").exists()
    for split in ("train", "val", "test"):
        assert np.array_equal(again.split_images(split), cifake_dm.split_images(split))
        assert np.array_equal(again.splits[split].labels, cifake_dm.splits[split].labels)
    assert again.mean == cifake_dm.mean and again.std == cifake_dm.std


def test_resolution_change_decodes_again(cifake_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = _module(cifake_folder, cache, resolution=32)
    other = _module(cifake_folder, cache, resolution=24)
    repeat = _module(cifake_folder, cache, resolution=24)
    assert "decode_s" in first.timings and "decode_s" in other.timings
    assert "cache_load_s" not in other.timings
    assert "cache_load_s" in repeat.timings and "decode_s" not in repeat.timings
    folders = {_folder(dm) for dm in (first, other)}
    assert len(folders) == 2 and all(f.is_dir() for f in folders)
    assert first.split_images("train").shape[1:] == (32, 32, 3)
    assert other.split_images("train").shape[1:] == (24, 24, 3)


def test_skip_bad_false_still_raises_on_cached_skips(tmp_path: Path) -> None:
    """A cache written while skipping a bad file must not let skip_bad=False pass silently."""
    root = _split_folder(tmp_path / "data")
    (root / "train" / "FAKE" / "corrupt.jpg").write_bytes(b"\x00garbage" * 50)
    lenient = _module(root, tmp_path / "cache", skip_bad=True)
    assert lenient.skipped == ["train/FAKE/corrupt.jpg"]
    with pytest.raises(BadImageError, match=r"corrupt\.jpg"):
        _module(root, tmp_path / "cache", skip_bad=False)


# --------------------------------------------------------------------------------------------- 3. sources


def test_folder_zip_and_tar_sources_agree(cifake_members: Members, tmp_path: Path) -> None:
    """Lower-case class folders, a .zip with a top-level folder and a .tar.gz list the same labels."""
    expected = {name.lower(): (name.split("/")[0], CLASSES.index(name.split("/")[1])) for name in cifake_members}
    assert {label for _, label in expected.values()} == {0, 1}

    lower = _write_tree(tmp_path / "lower", {n.lower(): b for n, b in cifake_members.items()})
    zipped = tmp_path / "archive.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for name, data in cifake_members.items():
            zf.writestr(f"CIFAKE/{name}", data)
        zf.writestr("__MACOSX/CIFAKE/train/REAL/junk.jpg", b"macOS metadata, not an image")
        zf.writestr("CIFAKE/train/FAKE/._junk.jpg", b"AppleDouble file, not an image")
    tarred = tmp_path / "small.tar.gz"
    with tarfile.open(tarred, "w:gz") as tf:
        for name, data in cifake_members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

    assert isinstance(Source.open(lower), FolderSource)
    assert isinstance(Source.open(zipped), ZipSource)
    assert isinstance(Source.open(tarred), TarSource)
    assert _listing_by_name(Source.open(lower)) == expected
    assert _listing_by_name(Source.open(zipped), prefix="CIFAKE/") == expected
    assert _listing_by_name(Source.open(tarred)) == expected

    # Decoded the same, from the archive's own bytes (no re-encoding), with FAKE = 1.
    by_kind = [
        ImageDataModule(str(p), cache_dir=str(tmp_path / "cache"), decode_workers=1).decoded()
        for p in (lower, zipped, tarred)
    ]
    for decoded in by_kind:
        assert decoded.skipped == []
        assert np.array_equal(decoded.images, by_kind[0].images)
        assert np.array_equal(decoded.labels, by_kind[0].labels)
    for name, image, label in zip(by_kind[1].names, by_kind[1].images, by_kind[1].labels, strict=True):
        original = name.removeprefix("CIFAKE/")
        assert label == (1 if "/FAKE/" in original else 0)
        assert np.array_equal(image, decode_image(cifake_members[original], 32))


# -------------------------------------------------------------------------- 4. any folder, any image


def _mixed_files() -> tuple[dict[str, bytes], dict[str, tuple[int, int, int]]]:
    """Class folders (no split) of solid-colour images in many formats, modes and sizes, with their colours."""
    variants = [  # (suffix, PIL format, mode, (width, height), save params)
        ("jpg", "JPEG", "RGB", (17, 40), {"quality": 95}),
        ("jpeg", "JPEG", "L", (300, 200), {"quality": 95}),
        ("png", "PNG", "RGB", (300, 200), {}),
        ("png", "PNG", "L", (17, 40), {}),
        ("png", "PNG", "RGBA", (24, 24), {}),
        ("png", "PNG", "P", (40, 17), {}),
        ("webp", "WEBP", "RGB", (33, 21), {"lossless": True}),
        ("webp", "WEBP", "RGBA", (300, 200), {"lossless": True}),
        ("gif", "GIF", "P", (20, 30), {}),
        ("bmp", "BMP", "L", (9, 64), {}),
    ]
    files: dict[str, bytes] = {}
    colours: dict[str, tuple[int, int, int]] = {}
    for c, cls in enumerate(CLASSES):
        for i, (suffix, fmt, mode, (w, h), params) in enumerate(variants):
            rgb = (40 + 20 * i + 5 * c, 200 - 60 * c, 90 + 10 * i)
            if mode == "L":
                rgb = (rgb[0],) * 3
            array = np.empty((h, w, 3), dtype=np.uint8)
            array[...] = rgb
            if mode == "RGBA":
                array = np.concatenate([array, np.full((h, w, 1), 255, np.uint8)], axis=2)
            name = f"{cls.lower()}/img{i}.{suffix}"
            files[name] = _encode(array, fmt, mode, **params)
            colours[name] = rgb
    return files, colours


def test_mixed_formats_modes_and_sizes(tmp_path: Path) -> None:
    files, colours = _mixed_files()
    root = _write_tree(tmp_path / "mixed", files)
    with Image.open(root / "real" / "img5.png") as img:
        assert img.mode == "P"  # the fixture really holds a palette image
    dm = _module(root, tmp_path / "cache", resolution=24, val_fraction=0.1, test_fraction=0.2)
    decoded = dm.decoded()
    assert decoded.skipped == [] and sorted(decoded.names) == sorted(files)
    for name, image in zip(decoded.names, decoded.images, strict=True):
        assert image.shape == (24, 24, 3) and image.dtype == np.uint8
        tolerance = 6 if name.endswith(("jpg", "jpeg")) else 0
        diff = np.abs(image.astype(int) - np.array(colours[name])).max()
        assert diff <= tolerance, f"{name}: off by {diff} from {colours[name]}"

    # No train/test folders: test is carved with test_fraction, then val from what is left; stratified.
    sizes = {k: np.bincount(v.labels, minlength=2).tolist() for k, v in dm.splits.items()}
    assert sizes == {"test": [2, 2], "val": [1, 1], "train": [7, 7]}
    for split in dm.splits:
        assert dm.split_images(split).shape[1:] == (24, 24, 3), split
    assert len(set().union(*({*_digests(dm.split_images(k))} for k in dm.splits))) == 20


# ---------------------------------------------------------------------------------------------- 5. bad input


def _bad_files(rng: np.random.Generator) -> dict[str, bytes]:
    """An unreadable file and a truncated JPEG (valid header, half the data)."""
    jpeg = _encode(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG")
    return {
        "train/FAKE/corrupt.jpg": rng.integers(0, 256, 500, dtype=np.uint8).tobytes(),
        "train/REAL/truncated.jpg": jpeg[: len(jpeg) // 2],
    }


def test_bad_images_skipped_and_counted(tmp_path: Path) -> None:
    root = _split_folder(tmp_path / "data", per_class=4)
    _write_tree(root, _bad_files(np.random.default_rng(1)))
    (root / "train" / "REAL" / "notes.txt").write_text("not an image, and not an error")
    dm = _module(root, tmp_path / "cache", skip_bad=True)
    assert dm.skipped == ["train/FAKE/corrupt.jpg", "train/REAL/truncated.jpg"]
    assert len(dm.splits["train"].labels) + len(dm.splits["val"].labels) == 8  # every good train image kept
    assert np.bincount(dm.splits["test"].labels).tolist() == [4, 4]


@pytest.mark.parametrize("bad", ["train/FAKE/corrupt.jpg", "train/REAL/truncated.jpg"])
def test_bad_image_raises_naming_the_file(bad: str, tmp_path: Path) -> None:
    root = _split_folder(tmp_path / "data")
    _write_tree(root, {bad: _bad_files(np.random.default_rng(1))[bad]})
    (root / "notes.txt").write_text("ignored")
    with pytest.raises(BadImageError, match=re.escape(bad)):
        _module(root, tmp_path / "cache", skip_bad=False)


def test_non_image_files_are_ignored(tmp_path: Path) -> None:
    root = _split_folder(tmp_path / "data")
    (root / "notes.txt").write_text("top-level notes")
    (root / "train" / "FAKE" / "notes.txt").write_text("notes beside the images")
    listing = Source.open(root).list(list(CLASSES))
    assert sorted(listing.ignored) == ["notes.txt", "train/FAKE/notes.txt"]
    dm = _module(root, tmp_path / "cache", skip_bad=False)
    assert dm.skipped == [] and len(dm.decoded().labels) == 16


def _empty_class(root: Path) -> Path:
    _split_folder(root)
    for f in (root / "train" / "REAL").iterdir():
        f.unlink()
    return root


def _flat(root: Path) -> Path:
    rng = np.random.default_rng(0)
    return _write_tree(root, {f"{i}.png": _random_png(rng) for i in range(4)})


def _not_an_archive(root: Path) -> Path:
    root.parent.mkdir(parents=True, exist_ok=True)
    path = root.with_suffix(".txt")
    path.write_text("neither folder nor archive")
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_empty_class, r"'train/REAL' is missing or has no images"),
        (_flat, r"no images found in class folders"),
        (lambda root: root / "does-not-exist", r"data source not found"),
        (_not_an_archive, r"is a file but not a \.zip"),
    ],
    ids=["empty-class", "no-class-folders", "missing-path", "not-an-archive"],
)
def test_layout_errors_name_the_path(make, message: str, tmp_path: Path) -> None:
    path = make(tmp_path / "data")
    with pytest.raises(DataLayoutError, match=message) as err:
        _module(path, tmp_path / "cache")
    assert str(path) in str(err.value)


# ------------------------------------------------------------------------------------------ 6. streaming


def test_stream_loader_matches_memory_loader(cifake_folder: Path, tmp_path: Path) -> None:
    memory = _module(cifake_folder, tmp_path / "cache", eval_batch_size=64)
    stream = _module(cifake_folder, tmp_path / "cache", loader="stream", num_workers=0, eval_batch_size=64)
    np.testing.assert_allclose(stream.mean, memory.mean, atol=1e-9)
    np.testing.assert_allclose(stream.std, memory.std, atol=1e-9)
    for split in ("val", "test"):
        m_images, m_labels = _batches(getattr(memory, f"{split}_dataloader")())
        s_images, s_labels = _batches(getattr(stream, f"{split}_dataloader")())
        assert s_images.dtype == m_images.dtype == torch.uint8
        assert s_labels.dtype == m_labels.dtype == torch.int64
        assert s_images.shape == m_images.shape == (len(m_labels), 3, 32, 32)
        assert torch.equal(s_images, m_images) and torch.equal(s_labels, m_labels)
    s_images, s_labels = _batches(stream.train_dataloader())
    assert s_images.shape == (len(stream.splits["train"].labels), 3, 32, 32)
    assert sorted(s_labels.tolist()) == sorted(memory.splits["train"].labels.tolist())


def test_stream_loader_drops_corrupt_files(tmp_path: Path) -> None:
    root = _split_folder(tmp_path / "data", per_class=4)
    _write_tree(root, _bad_files(np.random.default_rng(2)))  # in train: the stats pass must skip them too
    (root / "test" / "FAKE" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    dm = _module(root, tmp_path / "cache", loader="stream", num_workers=0, batch_size=64, eval_batch_size=64)
    assert len(dm.splits["test"].labels) == 9
    loader = dm.test_dataloader()
    batches = list(loader)
    assert len(batches) == 1
    images, labels, _, _ = batches[0]
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.tolist().count(1) == 4
    assert loader.dataset.skipped == ["test/FAKE/broken.jpg"]

    train = [dm.loader.entries[i] for i in dm.splits["train"].index]
    bad_in_train = sum(e.name.endswith(("corrupt.jpg", "truncated.jpg")) for e in train)
    images, _ = _batches(dm.train_dataloader())
    assert len(images) == len(train) - bad_in_train


# -------------------------------------------------------------------------------- 7. the memory loader


def _device_batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool, **order: object
) -> DeviceBatches:
    """DeviceBatches whose sources are the labels, in an EpochOrder."""
    split = Batch(images, labels, labels.clone(), torch.zeros(len(labels), dtype=torch.bool))
    return DeviceBatches(split, EpochOrder(len(labels), batch_size, shuffle, **order))


def _indexed(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose only pixel is their own index, and labels equal to the index."""
    return torch.arange(n).view(n, 1, 1, 1), torch.arange(n)


def test_device_batches_cover_every_index_once() -> None:
    images, labels = _indexed(103)
    batches = _device_batches(images, labels, batch_size=10, shuffle=True, seed=3)
    got = list(batches)
    assert len(got) == len(batches) == 11
    assert all(torch.equal(x.view(-1), y) and torch.equal(s, y) and not d.any() for x, y, s, d in got)  # paired
    order = torch.cat([b.labels for b in got])
    assert sorted(order.tolist()) == list(range(103))
    assert not torch.equal(order, torch.arange(103))  # shuffled


def test_device_batches_ranks_are_disjoint_halves() -> None:
    images, labels = _indexed(103)
    seen = []
    for rank in (0, 1):
        batches = _device_batches(images, labels, batch_size=10, shuffle=True, seed=3, rank=rank, world_size=2)
        seen.append(torch.cat([b.labels for b in batches]).tolist())
    assert {len(s) for s in seen} == {51, 52}
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(103))

    dropping = [_device_batches(images, labels, 10, True, seed=3, rank=r, world_size=2, drop_last=True) for r in (0, 1)]
    assert [len(list(b)) for b in dropping] == [5, 5]  # ranks must run the same number of steps


def test_device_batches_epochs_differ_but_are_reproducible() -> None:
    images, labels = _indexed(64)
    batches = _device_batches(images, labels, batch_size=16, shuffle=True, seed=5)
    first, second = (torch.cat([b.labels for b in batches]) for _ in range(2))
    assert not torch.equal(first, second)
    assert sorted(second.tolist()) == list(range(64))
    fresh = _device_batches(images, labels, batch_size=16, shuffle=True, seed=5)
    assert torch.equal(torch.cat([b.labels for b in fresh]), first)
    unshuffled = _device_batches(images, labels, batch_size=16, shuffle=False)
    assert torch.equal(torch.cat([b.labels for b in unshuffled]), torch.arange(64))


# ---------------------------------------------------------------------------- 8. augment and preprocess


def test_random_flip_is_per_sample_identity_or_mirror() -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    out = random_flip(x)
    same = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    mirrored = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)]
    assert all(s != m for s, m in zip(same, mirrored, strict=True))  # exactly one of the two, per sample
    assert 0 < sum(mirrored) < 64  # drawn per sample, not once per batch


def test_random_translate_is_a_per_sample_shift() -> None:
    torch.manual_seed(0)
    x = torch.rand(32, 3, 10, 12)
    assert torch.equal(random_translate(x, 0), x)
    pad = 2
    out = random_translate(x, pad)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    shifts = set()
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 10, dx : dx + 12])
        ]
        assert matches, f"sample {i} is not a crop of its own padded image"
        shifts.add(matches[0])
    assert len(shifts) > 1


def test_train_statistics_normalize_train_batch(cifake_dm: ImageDataModule) -> None:
    images = torch.from_numpy(cifake_dm.split_images("train")).permute(0, 3, 1, 2)
    x = _detector(cifake_dm).preprocess(images)
    assert x.dtype == torch.float32 and x.shape == (1800, 3, 32, 32)
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=0.05)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=0.05)


def test_training_batches_are_augmented_on_the_device(
    cifake_dm: ImageDataModule, cifake_path: Path, cache_dir: Path
) -> None:
    dm = ImageDataModule(str(cifake_path), cache_dir=str(cache_dir), augment=BatchAugment(flip=True), **SUBSET)
    dm.setup()
    images = torch.from_numpy(dm.split_images("val")[:64]).permute(0, 3, 1, 2)
    batch = Batch(images, *(torch.zeros(64, dtype=t) for t in (torch.int64, torch.int64, torch.bool)))
    dm.trainer = SimpleNamespace(training=False, testing=True)  # as Lightning's test loop moves a batch
    assert dm.on_after_batch_transfer(batch, 0).images is images  # raw uint8: the detector preprocesses it
    dm.trainer = SimpleNamespace(training=True, testing=False)
    plain = images.float() / 255
    torch.manual_seed(0)
    augmented = dm.on_after_batch_transfer(batch, 0).images
    mirrored = [torch.equal(a, p.flip(-1)) and not torch.equal(a, p) for a, p in zip(augmented, plain, strict=True)]
    unchanged = [torch.equal(a, p) for a, p in zip(augmented, plain, strict=True)]
    assert all(m or u for m, u in zip(mirrored, unchanged, strict=True)) and any(mirrored) and any(unchanged)


def test_greyscale_statistics_and_preprocess(cifake_path: Path, cache_dir: Path) -> None:
    dm = ImageDataModule(str(cifake_path), cache_dir=str(cache_dir), channels=1, **SUBSET)
    dm.setup()
    assert len(dm.mean) == len(dm.std) == 1
    images = torch.from_numpy(dm.split_images("train")).permute(0, 3, 1, 2)
    x = _detector(dm).preprocess(images)
    assert x.shape == (1800, 1, 32, 32)
    luma = (images.double() / 255 * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert torch.allclose(x.double(), (luma - dm.mean[0]) / dm.std[0], atol=1e-4)
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


# --------------------------------------------------------------------------------- 9. normalization stats


def test_stats_from_train_split_only_and_cached(
    cifake_dm: ImageDataModule, cifake_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_mean, train_std = channel_stats(cifake_dm.split_images("train"), 3)
    np.testing.assert_allclose(cifake_dm.mean, train_mean, atol=1e-9)
    np.testing.assert_allclose(cifake_dm.std, train_std, atol=1e-9)
    everything = np.concatenate([cifake_dm.split_images(k) for k in cifake_dm.splits])
    all_mean, _ = channel_stats(everything, 3)
    assert not np.allclose(cifake_dm.mean, all_mean, atol=1e-6, rtol=0)

    stored = [json.loads(p.read_text()) for p in (cache_dir / "stats").glob("*.json")]
    assert {"mean": cifake_dm.mean, "std": cifake_dm.std} in stored

    def no_recompute(*_: object, **__: object) -> None:
        raise AssertionError("stats recomputed instead of loaded from the cache")

    monkeypatch.setattr(decoded_mod, "channel_stats", no_recompute)
    again = ImageDataModule(str(cifake_path), cache_dir=str(cache_dir), **SUBSET)
    again.setup()
    assert again.mean == cifake_dm.mean and again.std == cifake_dm.std


def test_stats_follow_the_carved_train_split(tmp_path: Path) -> None:
    """Without a test folder the train split depends on test_fraction, and so must the cached stats."""
    rng = np.random.default_rng(4)
    files = {}
    for cls in CLASSES:
        for i in range(20):
            colour = np.empty((8, 8, 3), dtype=np.uint8)
            colour[...] = rng.integers(0, 256, 3)
            files[f"{cls}/{i}.png"] = _encode(colour, "PNG")
    root = _write_tree(tmp_path / "flat", files)
    for fraction in (0.2, 0.5):
        dm = _module(root, tmp_path / "cache", resolution=8, test_fraction=fraction)
        expected_mean, expected_std = channel_stats(dm.split_images("train"), 3)
        np.testing.assert_allclose(dm.mean, expected_mean, atol=1e-9)
        np.testing.assert_allclose(dm.std, expected_std, atol=1e-9)
    assert len(list((tmp_path / "cache" / "stats").glob("*.json"))) == 2
