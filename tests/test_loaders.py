"""Loaders (memory, cached, stream, litdata) and the split plan, on small generated multi-source datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fakedetect.data.batch import Batch
from fakedetect.data.datamodule import ImageDataModule
from fakedetect.data.layouts import Entry
from fakedetect.data.loaders import LOADERS
from fakedetect.data.loaders.decoding import StreamDataset
from fakedetect.data.sources import Source
from fakedetect.tools.pack import pack
from fakedetect.train import train
from fakedetect.utils.errors import ConfigError
from tests.conftest import QUIET, assert_one_line, compose_config, metrics_json, run_command
from tests.test_data import _encode, _write_tree

# (source, class) groups and how many images each split holds of them
GROUPS = (("camera", "REAL"), ("gen_a", "FAKE"), ("gen_b", "FAKE"))
PER_SPLIT = {"train": 8, "val": 2, "test": 3}
COPIES = [f"img/{source}_test_0.png" for source, _ in GROUPS]


def _image(rng: np.random.Generator) -> bytes:
    """A random PNG of its own size and aspect (20-60 px a side)."""
    h, w = rng.integers(20, 61, 2)
    return _encode(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "PNG")


def _manifest_dataset(root: Path) -> dict[str, tuple[str, str, str]]:
    """Images under img/ listed in labels.csv (path,label,split,source): three sources, train/val/test given; the
    first test image of each source is a copy of its first train image (COPIES). Returns {name: (split, class,
    source)}."""
    rng = np.random.default_rng(0)
    truth = {
        f"img/{source}_{split}_{i}.png": (split, cls, source)
        for split, n in PER_SPLIT.items()
        for source, cls in GROUPS
        for i in range(n)
    }
    files = {name: _image(rng) for name in truth}
    _write_tree(root, {**files, **{n: files[n.replace("_test_", "_train_")] for n in COPIES}})
    rows = [f"{name},{cls},{split},{source}" for name, (split, cls, source) in truth.items()]
    (root / "labels.csv").write_text("\n".join(["path,label,split,source", *rows]) + "\n")
    return truth


def _forensynths(root: Path, per_class: int = 6) -> Path:
    """<generator>/{0_real,1_fake}/image, no split folders: sources gen_a and gen_b (fakes and reals of each)."""
    rng = np.random.default_rng(1)
    return _write_tree(
        root,
        {
            f"{gen}/{cls}/{i}.png": _image(rng)
            for gen in ("gen_a", "gen_b")
            for cls in ("0_real", "1_fake")
            for i in range(per_class)
        },
    )


def _module(root: Path, cache: Path, loader: str = "memory", **kwargs: object) -> ImageDataModule:
    kwargs = {
        "resolution": 16,
        "decode_workers": 1,
        "num_workers": 0,
        "batch_size": 4,
        "eval_batch_size": 5,
        "cache_dir": str(cache),
        "loader": loader,
        **kwargs,
    }
    dm = ImageDataModule(str(root), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _all(loader: object) -> Batch:
    """Every batch of a loader, concatenated."""
    return Batch(*(torch.cat(parts) for parts in zip(*loader, strict=True)))


def _by_content(images: torch.Tensor, labels: torch.Tensor, sources: torch.Tensor) -> list[tuple]:
    """A shuffled split as a sorted list of (image bytes, label, source), to compare whatever the order."""
    return sorted((x.numpy().tobytes(), int(y), int(s)) for x, y, s in zip(images, labels, sources, strict=True))


@pytest.fixture(scope="module")
def manifest_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[str, str, str]]]:
    root = tmp_path_factory.mktemp("manifest") / "data"
    return root, _manifest_dataset(root)


@pytest.fixture(scope="module")
def every_loader(manifest_root, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ImageDataModule]:
    root, _ = manifest_root
    tmp = tmp_path_factory.mktemp("loaders")
    pack(_module(root, tmp / "cache", "cached", manifest="labels.csv"), str(tmp / "packed"))
    # cached and litdata read in a worker process, as they would in training
    return {
        loader: _module(
            root,
            tmp / "cache",
            loader,
            manifest="labels.csv",
            litdata_dir=str(tmp / "packed"),
            num_workers=int(loader in ("cached", "litdata")),
        )
        for loader in LOADERS
    }


def test_every_loader_yields_the_same_splits(every_loader: dict[str, ImageDataModule], manifest_root) -> None:
    _, truth = manifest_root
    memory = every_loader["memory"]
    assert memory.source_names == ["camera", "gen_a", "gen_b"]
    # test, in test order: labels and sources are the files' own (from the manifest)
    images, labels, sources, _ = _all(memory.test_dataloader())
    assert images.shape == (9, 3, 16, 16) and images.dtype == torch.uint8
    assert labels.dtype == sources.dtype == torch.int64
    assert [memory.classes[y] for y in labels] == [truth[n][1] for n in memory.test_names]
    assert [memory.source_names[s] for s in sources] == [truth[n][2] for n in memory.test_names]
    for loader, dm in every_loader.items():
        assert dm.split_sizes == {"train": 24, "val": 6, "test": 9}, loader
        assert dm.source_names == memory.source_names and dm.test_names == memory.test_names, loader
        assert dm.mean == pytest.approx(memory.mean) and dm.std == pytest.approx(memory.std), loader
        for split in ("val", "test"):  # unshuffled: the same batches, in the same order
            for got, expected in zip(
                _all(getattr(dm, f"{split}_dataloader")()), _all(getattr(memory, f"{split}_dataloader")()), strict=True
            ):
                assert torch.equal(got, expected), (loader, split)
        train_batches = list(dm.train_dataloader())
        assert all(len(b[1]) == 4 for b in train_batches), loader  # drop_last: whole batches only
        assert _by_content(*_all(train_batches)[:3]) == _by_content(*_all(memory.train_dataloader())[:3]), loader
    # memory and cached draw the same shuffled order from the seed
    assert all(
        torch.equal(a, b)
        for a, b in zip(_all(every_loader["cached"].train_dataloader()), _all(memory.train_dataloader()), strict=True)
    )


def test_every_registered_loader_marks_the_test_duplicates(every_loader: dict[str, ImageDataModule]) -> None:
    assert set(every_loader) == set(LOADERS)
    for loader, dm in every_loader.items():
        marks = dm.splits["test"].duplicates
        assert sorted(np.array(dm.test_names)[marks].tolist()) == sorted(COPIES), loader
        assert dm.duplicate_groups == 3, loader
        tested = _all(dm.test_dataloader())
        assert tested.duplicates.dtype == torch.bool and tested.duplicates.tolist() == marks.tolist(), loader
        # the batch carries what the deduplicated figures leave out: the test images without their copies
        assert tested.labels[~tested.duplicates].tolist() == dm.splits["test"].labels[~marks].tolist(), loader
        for split in ("train", "val"):
            assert not _all(getattr(dm, f"{split}_dataloader")()).duplicates.any(), (loader, split)


def test_val_folder_used_as_given_not_carved(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    files = {
        f"{split}/{cls}/{i}.png": _image(rng)
        for split, n in (("train", 6), ("val", 2), ("test", 3))
        for cls in ("real", "fake")
        for i in range(n)
    }
    root = _write_tree(tmp_path / "data", files)
    for loader in ("memory", "stream"):
        dm = _module(root, tmp_path / "cache", loader, val_fraction=0.5)
        names = dm.decoded().names if loader == "memory" else [e.name for e in dm.loader.entries]
        assert {names[i] for i in dm.splits["val"].index} == {n for n in files if n.startswith("val/")}, loader
        assert {names[i] for i in dm.splits["train"].index} == {n for n in files if n.startswith("train/")}
        assert set(dm.test_names) == {n for n in files if n.startswith("test/")}


def test_train_folder_only_carves_test_then_val(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    root = _write_tree(
        tmp_path / "data", {f"train/{c}/{i}.png": _image(rng) for c in ("REAL", "FAKE") for i in range(8)}
    )
    dm = _module(root, tmp_path / "cache", test_fraction=0.25, val_fraction=0.5)
    assert {k: np.bincount(v.labels).tolist() for k, v in dm.splits.items()} == {
        "test": [2, 2],
        "val": [3, 3],
        "train": [3, 3],
    }


def test_test_fraction_one_makes_a_splitless_source_all_test(tmp_path: Path) -> None:
    root = _forensynths(tmp_path / "data")
    dm = _module(root, tmp_path / "cache", test_fraction=1.0)  # as eval plans it: the checkpoint brings statistics
    assert dm.split_sizes == {"train": 0, "val": 0, "test": 24}
    assert dm.source_names == ["gen_a", "gen_b"]
    with pytest.raises(ConfigError, match=r"data\.test_fraction=1\.0 leaves no train images"):
        dm.statistics()  # what a detector without statistics would be given
    _, labels, sources, _ = _all(dm.test_dataloader())
    assert np.bincount(labels.numpy()).tolist() == [12, 12] and np.bincount(sources.numpy()).tolist() == [12, 12]


def test_train_sources_keep_every_real_image(tmp_path: Path) -> None:
    root = _forensynths(tmp_path / "data")
    whole = _module(root, tmp_path / "cache")
    dm = _module(root, tmp_path / "cache", train_sources=["gen_a"])
    gen_a = dm.source_names.index("gen_a")
    for split in ("train", "val"):
        part = dm.splits[split]
        assert (part.sources[part.labels == 1] == gen_a).all(), split  # fakes of gen_a only
        assert np.array_equal(part.index[part.labels == 0], whole.splits[split].index[whole.splits[split].labels == 0])
    assert np.array_equal(dm.splits["test"].index, whole.splits["test"].index)  # test keeps every source
    assert (dm.splits["test"].sources[dm.splits["test"].labels == 1] != gen_a).any()
    with pytest.raises(ConfigError, match=r"data\.train_sources: \['sdxl'\] not among the sources .*'gen_a', 'gen_b'"):
        _module(root, tmp_path / "cache", train_sources=["sdxl"])


def test_random_crop_differs_per_pass_only_when_training(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    root = _write_tree(
        tmp_path / "data", {"REAL/big.png": _encode(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8), "PNG")}
    )
    entries, sources = [Entry("REAL/big.png", "", 0, "REAL")], np.zeros(1, dtype=np.int64)

    def crops(random_fit: bool) -> list[torch.Tensor]:
        data = StreamDataset(Source.open(root), entries, sources, 16, fit="random_crop", random_fit=random_fit)
        torch.manual_seed(0)
        return [data[0][0] for _ in range(4)]

    training = crops(True)
    assert len({x.numpy().tobytes() for x in training}) > 1
    assert all(torch.equal(a, b) for a, b in zip(training, crops(True), strict=True))  # seeded: reproducible
    assert len({x.numpy().tobytes() for x in crops(False)}) == 1  # eval: the centre, always


def _data(root: Path, tmp_path: Path) -> list[str]:
    """The manifest tree at 16 px, with a private decode cache: what every command here reads."""
    return [
        f"data.root={root}",
        "data.manifest=labels.csv",
        "data.resolution=16",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]


def _train_cfg(root: Path, tmp_path: Path, *overrides: str):
    return compose_config(
        "train",
        [
            *_data(root, tmp_path),
            "data.decode_workers=1",
            "data.batch_size=4",
            "data.eval_batch_size=8",
            "trainer=cpu",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=3",
            *QUIET,
            *overrides,
        ],
        tmp_path / "run",
    )


@pytest.mark.parametrize("loader", ["cached", "litdata"])
def test_tiny_training_run(loader: str, manifest_root, tmp_path: Path) -> None:
    root, _ = manifest_root
    extra = [f"data.loader={loader}", "data.num_workers=1"]
    if loader == "litdata":  # the pack command, as users run it
        packed = tmp_path / "packed"
        done = run_command(
            "pack",
            *_data(root, tmp_path),
            f"output={packed}",
            f"hydra.run.dir={tmp_path / 'pack'}",
        )
        assert done.returncode == 0, done.stderr
        assert json.loads((packed / "fakedetect_pack.json").read_text())["source_names"] == ["camera", "gen_a", "gen_b"]
        extra.append(f"data.litdata_dir={packed}")
    metrics = train(_train_cfg(root, tmp_path, *extra))
    assert 0 <= metrics["test/acc"] <= 1
    record = metrics_json(tmp_path / "run")
    assert record["images"] == {"train": 24, "val": 6, "test": 9}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.fit=stretch", "data.fit must be squash | center_crop | random_crop | resize_crop, got 'stretch'"),
        ("data.train_sources=[sdxl]", "data.train_sources: ['sdxl'] not among the sources"),
    ],
)
def test_bad_data_keys_are_one_line(override: str, expected: str, manifest_root, tmp_path: Path) -> None:
    root, _ = manifest_root
    done = run_command(
        "train",
        *_data(root, tmp_path),
        "data.decode_workers=1",
        "trainer=cpu",
        override,
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert_one_line(done, expected)


def test_litdata_dir_without_a_pack_or_packed_otherwise(manifest_root, every_loader, tmp_path: Path) -> None:
    root, _ = manifest_root
    with pytest.raises(ConfigError, match=r"data\.litdata_dir=.*: no readable fakedetect_pack\.json there"):
        _module(root, tmp_path / "cache", "litdata", litdata_dir=str(tmp_path))
    packed = every_loader["litdata"].litdata_dir
    with pytest.raises(ConfigError, match=r"data\.resolution=24, but data\.litdata_dir=.* was packed with 16"):
        _module(root, tmp_path / "cache", "litdata", litdata_dir=packed, resolution=24)
    with pytest.raises(ConfigError, match=r"data\.root=.*other, but data\.litdata_dir=.* holds .*data: set data\.root"):
        _module(root.parent / "other", tmp_path / "cache", "litdata", litdata_dir=packed)
    with pytest.raises(ConfigError, match=r"data\.train_sources cannot filter packed data"):
        _module(root, tmp_path / "cache", "litdata", litdata_dir=packed, train_sources=["gen_a"])
    with pytest.raises(
        ConfigError,
        match=r"the train split has no FAKE images: data\.train_sources=\['camera'\] has "
        r"no fakes in it",
    ):
        _module(root, every_loader["memory"].cache_dir, manifest="labels.csv", train_sources=["camera"])
    with pytest.raises(ConfigError, match=r"already holds packed data"):
        pack(every_loader["cached"], packed)
    with pytest.raises(ConfigError, match=r"output=.*data is a folder with files that pack did not write"):
        pack(every_loader["cached"], str(root))  # the dataset itself: its folders must stay
    assert (root / "labels.csv").is_file()


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("loader", "disk", r"data\.loader must be memory \| cached \| stream \| litdata, got 'disk'"),
        ("litdata_dir", None, r"data\.litdata_dir must be set with data\.loader=litdata"),
        ("train_sources", [], r"data\.train_sources must be null \(every source\) or a non-empty list"),
        ("test_fraction", 1.5, r"data\.test_fraction must be in \(0, 1\]"),
        ("layout", "kaggle", r"data\.layout must be auto \| folders \| genimage \| forensynths \| manifest"),
    ],
)
def test_bad_data_values_raise_before_reading(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        ImageDataModule("unused", **{"loader": "litdata", "litdata_dir": "x", key: value})


def test_edited_manifest_outside_the_source_is_listed_again(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    names = [f"{i}.png" for i in range(8)]
    root = _write_tree(tmp_path / "data", {n: _image(rng) for n in names})
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,label\n" + "".join(f"{n},{'REAL' if i < 4 else 'FAKE'}\n" for i, n in enumerate(names)))
    before = (
        _module(root, tmp_path / "cache", manifest=str(manifest), val_fraction=0.0, test_fraction=0.5)
        .decoded()
        .labels.copy()
    )
    manifest.write_text("path,label\n" + "".join(f"{n},{'FAKE' if i < 4 else 'REAL'}\n" for i, n in enumerate(names)))
    again = _module(root, tmp_path / "cache", manifest=str(manifest), val_fraction=0.0, test_fraction=0.5)
    assert np.array_equal(again.decoded().labels, 1 - before)  # not the stale cache
