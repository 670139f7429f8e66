"""The data settings: DataConfig checks every key once, names the key of a bad one, and keys each cache on exactly
the settings that change what the cache holds; the loader registry builds what `data.loader` names."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from fakedetect.data.config import Affects, DataConfig
from fakedetect.data.datamodule import DATA_KEYS, ImageDataModule
from fakedetect.data.decode import Fit
from fakedetect.data.layouts import Layout
from fakedetect.data.loaders import LOADERS, Loader, register
from fakedetect.data.loaders.memory import MemoryLoader
from fakedetect.utils.errors import ConfigError
from tests.conftest import compose_config


def test_an_unknown_key_is_named_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"^data\.resolutoin is not a data setting; the settings are .*resolution"):
        ImageDataModule("never/read", resolutoin=32)


@pytest.mark.parametrize(
    ("key", "value"),
    [("fit", "stretch"), ("layout", "kaggle"), ("stats_sample", 0), ("skip_bad", "yes"), ("manifest", "")],
)
def test_a_bad_value_names_its_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^data\.{key} must be .*, got {re.escape(repr(value))}$"):
        DataConfig(root="never/read", **{key: value})


def test_settings_arrive_as_plain_values() -> None:
    settings = {"classes": ("real", "fake"), "fit": "center_crop", "layout": "folders", "train_sources": ("b", "a")}
    config = DataConfig(root="r", cache_dir=None, **settings)
    assert config.classes == ["real", "fake"] and config.train_sources == ["a", "b"]
    assert config.fit is Fit.CENTER_CROP and config.layout is Layout.FOLDERS and config.cache_dir == Path("data/cache")
    assert config.fit == "center_crop" and f"{config.fit}" == "center_crop"  # a member is its string
    with pytest.raises(Exception, match="cannot assign"):
        config.resolution = 64  # type: ignore[misc]


@pytest.mark.parametrize("data", ["cifake", "folder"])
def test_every_setting_is_a_key_of_the_data_config_group(data: str, tmp_path: Path) -> None:
    """The shipped `data` configs and the data module take the same keys (Hydra's `_target_` aside)."""
    cfg = compose_config("train", [f"data={data}", "data.root=somewhere"], tmp_path)
    assert set(cfg.data) - {"_target_"} == DATA_KEYS == {f.name for f in fields(DataConfig)} | {"augment"}


@pytest.mark.parametrize(
    ("change", "level"),
    [
        ({"fit": "center_crop"}, Affects.PIXELS),
        ({"resolution": 64}, Affects.PIXELS),
        ({"max_pixels": None}, Affects.PIXELS),
        ({"classes": ["real", "ai"]}, Affects.LISTING),
        ({"max_file_bytes": None}, Affects.LISTING),  # a file over it is skipped unread: its digest changes too
        ({"train_limit": 100}, Affects.LISTING),
        ({"val_fraction": 0.2}, Affects.SPLITS),
        ({"train_sources": ["a"]}, Affects.SPLITS),
        ({"channels": 1}, Affects.STATISTICS),
        ({"batch_size": 7}, None),
        ({"loader": "cached"}, None),
        ({"num_workers": 0}, None),
        ({"decode_workers": 1}, None),
    ],
)
def test_a_setting_changes_the_keys_of_its_level_and_above(change: dict, level: Affects | None) -> None:
    base, changed = DataConfig(root="r"), DataConfig(root="r", **change)
    for upto in Affects:
        differs = changed.key(upto, "identity") != base.key(upto, "identity")
        assert differs == (level is not None and level <= upto), (change, upto)
    assert (changed.pixel_key("identity") != base.pixel_key("identity")) == (level in (Affects.LISTING, Affects.PIXELS))
    assert base.pixel_key("another source") != base.pixel_key("identity")


def test_the_seed_picks_files_only_for_a_limited_listing_and_the_sample_only_streams() -> None:
    def differ(key: str, **settings: object) -> bool:
        a = DataConfig(root="r", seed=1, stats_sample=10, **settings)
        b = DataConfig(root="r", seed=2, stats_sample=20, **settings)
        return getattr(a, key)("identity") != getattr(b, key)("identity")

    assert not differ("pixel_key") and differ("pixel_key", train_limit=100)
    assert differ("statistics_key")  # the seed carves val from train either way
    a, b = (DataConfig(root="r", stats_sample=n) for n in (10, 20))
    assert a.statistics_key("i") == b.statistics_key("i")
    a, b = (DataConfig(root="r", loader="stream", stats_sample=n) for n in (10, 20))
    assert a.statistics_key("i") != b.statistics_key("i")


def test_a_manifest_outside_the_source_is_keyed_by_its_content(tmp_path: Path) -> None:
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,label\na.png,REAL\n")
    config = DataConfig(root="r", manifest=str(manifest))
    before = config.pixel_key("identity")
    manifest.write_text("path,label\na.png,FAKE\n")
    assert config.pixel_key("identity") != before


def test_the_registry_builds_the_loader_data_loader_names() -> None:
    assert list(LOADERS) == ["memory", "cached", "stream", "litdata"]
    for name, cls in LOADERS.items():
        dm = ImageDataModule("never/read", loader=name, litdata_dir="packed")
        assert isinstance(dm.loader, cls) and isinstance(dm.loader, Loader) and dm.loader.name == name


def test_a_registered_loader_is_a_choice_of_data_loader() -> None:
    with pytest.raises(ConfigError, match=r"^data\.loader must be memory \| cached \| stream \| litdata, got 'pl"):
        DataConfig(root="r", loader="planted")

    @register("planted")
    class Planted(MemoryLoader):
        """A new way of loading: one class, registered by name, and nothing else to change."""

    try:
        assert type(ImageDataModule("never/read", loader="planted").loader) is Planted
        with pytest.raises(ConfigError, match=r"memory \| cached \| stream \| litdata \| planted, got 'disk'$"):
            DataConfig(root="r", loader="disk")
    finally:
        del LOADERS["planted"]
