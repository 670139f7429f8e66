"""Layouts and labels: split folders, class aliases, GenImage, ForenSynths and CSV manifests, on member names and on
tiny generated sources."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from fakedetect.data.layouts import DataLayoutError, Entry, class_folders, detect_layout, from_manifest, match
from fakedetect.data.sources import Source
from fakedetect.utils.errors import ConfigError
from tests.test_data import _write_tree

CLASSES = ["REAL", "FAKE"]


def _placed(names: list[str], **kwargs: object) -> dict[str, tuple[str, int, str]]:
    """{name: (split, label, source)} of the entries `match` places."""
    return {e.name: (e.split, e.label, e.source) for e in match(names, CLASSES, **kwargs).entries}


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def _tree(root: Path, names: list[str]) -> Path:
    return _write_tree(root, dict.fromkeys(names, _png()))


# -------------------------------------------------------------------------------------------------- folders


def test_flat_class_folders_have_no_split_and_the_class_as_source() -> None:
    names = ["REAL/a.jpg", "FAKE/b.png", "fake/c.webp", "readme.txt", ".DS_Store", "FAKE/._b.png"]
    listing = match(names, CLASSES, where="data")
    assert {e.name: (e.split, e.label, e.source) for e in listing.entries} == {
        "REAL/a.jpg": ("", 0, "REAL"),
        "FAKE/b.png": ("", 1, "FAKE"),
        "fake/c.webp": ("", 1, "FAKE"),
    }
    assert listing.ignored == ["readme.txt"]  # hidden and AppleDouble files are not even reported


def test_train_val_test_split_folders_any_case_under_a_prefix() -> None:
    names = [f"kaggle/{s}/{c}/{i}.jpg" for s in ("Train", "VAL", "test") for c in ("real", "Fake") for i in range(2)]
    placed = _placed(names + ["kaggle/stray/REAL/x.jpg"])
    assert {(s, label) for s, label, _ in placed.values()} == {(s, c) for s in ("train", "val", "test") for c in (0, 1)}
    assert placed["kaggle/VAL/Fake/1.jpg"] == ("val", 1, "FAKE")
    listing = match(names + ["kaggle/REAL/x.jpg"], CLASSES)
    assert listing.ignored == ["kaggle/REAL/x.jpg"]  # outside the split folders, while there are split folders


@pytest.mark.parametrize("val", ["valid", "Validation", "val"])
def test_kaggle_valid_or_validation_folder_is_the_val_split(val: str) -> None:
    """Kaggle's sets (e.g. "140k Real and Fake Faces": real_vs_fake/real-vs-fake/{train,valid,test}/{real,fake})
    name their validation split `valid` or `validation`: it is the val split, not ignored."""
    names = [
        f"real-vs-fake/{s}/{c}/{i}.jpg" for s in ("train", val, "test") for c in ("real", "fake") for i in range(2)
    ]
    listing = match(names, CLASSES)
    assert listing.ignored == []
    assert sorted({e.split for e in listing.entries}) == ["test", "train", "val"]
    assert [e.name for e in listing.split("val")] == sorted(n for n in names if f"/{val}/" in n)
    manifest = _manifest("path,label,split\na.jpg,REAL,valid\nb.jpg,FAKE,Validation\n", ["a.jpg", "b.jpg"])
    assert [e.split for e in manifest.entries] == ["val", "val"]


def test_a_split_without_one_class_is_one_line_naming_it() -> None:
    names = ["train/REAL/a.jpg", "train/FAKE/b.jpg", "val/REAL/c.jpg"]
    with pytest.raises(DataLayoutError, match=r"^root: split or class folder 'val/FAKE' is missing or has no images$"):
        match(names, CLASSES, where="root")


def test_no_class_folder_names_the_aliases_and_a_csv() -> None:
    with pytest.raises(
        DataLayoutError,
        match=r"^root: no images found in class folders \['REAL', 'FAKE'\] "
        r"\(data\.layout=auto: expected split/class/image, e\.g\. .*"
        r"data\.aliases; labels in a CSV: data\.manifest=train\.csv\)$",
    ):
        match(["train.csv", "train_data/a.jpg"], CLASSES, where="root")


def test_forced_layout_that_does_not_fit_says_what_it_expects() -> None:
    with pytest.raises(
        DataLayoutError,
        match=r"\(data\.layout=genimage: expected <generator>/\{train,val\}/<class>/"
        r"image, e\.g\. sdv4/train/ai/x\.png; other class folder names via ",
    ):
        match(["REAL/a.jpg", "FAKE/b.jpg"], CLASSES, layout="genimage", where="web60")


# -------------------------------------------------------------------------------------------------- aliases


def test_default_aliases_cover_real_fake_nature_ai_and_forensynths() -> None:
    table = class_folders(CLASSES)
    assert {n: table[n] for n in ("real", "nature", "0_real", "fake", "ai", "1_fake")} == {
        "real": 0,
        "nature": 0,
        "0_real": 0,
        "fake": 1,
        "ai": 1,
        "1_fake": 1,
    }
    assert class_folders(["cat", "dog"]) == {"cat": 0, "dog": 1}  # defaults of absent classes do not apply


def test_configured_aliases_replace_the_defaults() -> None:
    names = ["Photos/a.jpg", "midjourney/b.jpg", "dalle/c.jpg", "real/d.jpg"]
    placed = _placed(names, aliases={"REAL": ["photos"], "fake": ["Midjourney", "DALLE"]})
    assert placed == {
        "Photos/a.jpg": ("", 0, "REAL"),
        "midjourney/b.jpg": ("", 1, "FAKE"),
        "dalle/c.jpg": ("", 1, "FAKE"),
        "real/d.jpg": ("", 0, "REAL"),
    }  # class names always match


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        ({"REAL": ["x"], "FAKE": ["X"]}, r"^data\.aliases: folder name 'X' would label both REAL and FAKE"),
        ({"REAL": ["fake"]}, r"^data\.aliases: folder name 'fake' would label both FAKE and REAL"),
        ({"DOG": ["x"]}, r"^data\.aliases: 'DOG' is not one of data\.classes \['REAL', 'FAKE'\]$"),
        ({"REAL": "photos"}, r"^data\.aliases\.REAL must be a list of folder names, got 'photos'$"),
        (["photos"], r"^data\.aliases must be a mapping"),
    ],
    ids=["twice", "other-class", "unknown-class", "not-a-list", "not-a-mapping"],
)
def test_bad_aliases_are_one_line(aliases: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        class_folders(CLASSES, aliases)


# --------------------------------------------------------------------------------- GenImage and ForenSynths


GENIMAGE = [
    f"{top}/{gen}/{split}/{cls}/{i}.{'png' if cls == 'ai' else 'JPEG'}"
    for top, gen in (("stable_diffusion_v_1_4", "imagenet_ai_0419_sdv4"), ("ADM", "imagenet_ai_0508_adm"))
    for split in ("train", "val")
    for cls in ("ai", "nature")
    for i in range(2)
]


def test_genimage_val_is_test_and_the_generator_is_the_source() -> None:
    placed = _placed(GENIMAGE)
    assert len(placed) == len(GENIMAGE)
    assert placed["ADM/imagenet_ai_0508_adm/val/ai/0.png"] == ("test", 1, "imagenet_ai_0508_adm")
    assert placed["stable_diffusion_v_1_4/imagenet_ai_0419_sdv4/train/nature/1.JPEG"] == (
        "train",
        0,
        "imagenet_ai_0419_sdv4",
    )
    assert {s for s, _, _ in placed.values()} == {"train", "test"}


def test_genimage_rooted_at_one_generator_takes_the_root_name() -> None:
    names = [f"{s}/{c}/x.png" for s in ("train", "val") for c in ("ai", "nature")]
    assert set(_placed(names, root_name="imagenet_glide").values()) == {
        ("train", 1, "imagenet_glide"),
        ("train", 0, "imagenet_glide"),
        ("test", 1, "imagenet_glide"),
        ("test", 0, "imagenet_glide"),
    }


def test_genimage_without_val_names_genimage_val() -> None:
    names = [n for n in GENIMAGE if "/val/ai/" not in n]
    with pytest.raises(DataLayoutError, match=r"'val/FAKE' \(GenImage's val is the test split\) is missing"):
        match(names, CLASSES, layout="genimage")


FORENSYNTHS = [
    "test/progan/airplane/0_real/a.png",
    "test/progan/airplane/1_fake/a.png",
    "test/progan/cat/1_fake/b.png",
    "test/biggan/0_real/c.png",
    "test/biggan/1_fake/c.png",
    "train/airplane/0_real/d.png",
    "train/airplane/1_fake/d.png",
]


def test_forensynths_with_and_without_category_level() -> None:
    placed = _placed(FORENSYNTHS)
    assert placed["test/progan/cat/1_fake/b.png"] == ("test", 1, "progan")  # with a category folder
    assert placed["test/biggan/0_real/c.png"] == ("test", 0, "biggan")  # without one
    assert placed["train/airplane/1_fake/d.png"] == ("train", 1, "airplane")  # ProGAN's train tree: by category
    unsplit = _placed([n.removeprefix("test/") for n in FORENSYNTHS if n.startswith("test/")])
    assert unsplit["progan/cat/1_fake/b.png"] == ("", 1, "progan")
    assert unsplit["biggan/0_real/c.png"] == ("", 0, "biggan")


@pytest.mark.parametrize(
    ("names", "layout"),
    [
        (GENIMAGE, "genimage"),
        (FORENSYNTHS, "forensynths"),
        (["train/REAL/a.jpg", "test/FAKE/b.jpg"], "folders"),
        (["cifake/train/ai/a.jpg", "cifake/test/nature/b.jpg"], "folders"),  # ai/nature, but a test split: not GenImage
        (["0_real/a.jpg", "fake/b.jpg"], "folders"),  # mixed conventions
    ],
    ids=["genimage", "forensynths", "cifake", "ai-nature-with-test", "mixed"],
)
def test_auto_detects_the_layout(names: list[str], layout: str) -> None:
    assert detect_layout([tuple(p.lower() for p in n.split("/")[:-1]) for n in names]) == layout


def test_forced_folders_layout_keeps_genimage_val_as_val() -> None:
    placed = _placed(GENIMAGE, layout="folders")
    assert placed["ADM/imagenet_ai_0508_adm/val/ai/0.png"] == ("val", 1, "FAKE")


@pytest.mark.parametrize(
    ("layout", "manifest", "message"),
    [
        ("imagefolder", None, r"^data\.layout must be one of auto, folders, genimage, forensynths, manifest, got "),
        ("manifest", None, r"^data\.layout=manifest needs data\.manifest="),
        ("folders", "labels.csv", r"^data\.manifest is set but data\.layout=folders"),
    ],
    ids=["unknown", "manifest-without-csv", "csv-with-folders"],
)
def test_bad_layout_keys_are_one_line(layout: str, manifest: str | None, message: str, tmp_path: Path) -> None:
    source = Source.open(_tree(tmp_path, ["REAL/a.png", "FAKE/b.png"]))
    with pytest.raises(ConfigError, match=message):
        source.list(CLASSES, layout=layout, manifest=manifest)


# ------------------------------------------------------------------------------------------------- manifests


def _manifest(text: str, names: list[str] | None = None):
    return from_manifest(text, "labels.csv", names if names is not None else _names_in(text), CLASSES)


def _names_in(text: str) -> list[str]:
    return [line.split(",")[0] for line in text.splitlines()[1:] if line]


def test_manifest_with_split_and_source_columns() -> None:
    text = (
        "path,label,split,source\n"
        "a/1.jpg,REAL,train,unsplash\nb/2.png,fake,Train,midjourney\n"
        "./a/3.jpg,0,test,\nb\\4.png,ai,TEST,dalle3\n"
    )
    listing = _manifest(text, ["a/1.jpg", "b/2.png", "a/3.jpg", "b/4.png", "labels.csv"])
    assert listing.entries == [
        Entry("a/1.jpg", "train", 0, "unsplash"),
        Entry("b/2.png", "train", 1, "midjourney"),
        Entry("a/3.jpg", "test", 0, "REAL"),
        Entry("b/4.png", "test", 1, "dalle3"),
    ]
    assert listing.ignored == ["labels.csv"]


def test_kaggle_manifest_without_split_or_source() -> None:
    """Kaggle's "AI vs human-generated" train.csv: an unnamed index column, file_name, and label 1 = AI."""
    text = ",file_name,label\n0,train_data/a.jpg,1\n1,train_data/b.jpg,0\n2,train_data/c.jpg,1\n"
    listing = from_manifest(text, "train.csv", ["train_data/a.jpg", "train_data/b.jpg", "train_data/c.jpg"], CLASSES)
    assert [(e.name, e.split, e.label, e.source) for e in listing.entries] == [
        ("train_data/a.jpg", "", 1, "FAKE"),
        ("train_data/b.jpg", "", 0, "REAL"),
        ("train_data/c.jpg", "", 1, "FAKE"),
    ]


def test_manifest_rows_without_their_file_are_skipped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    text = "path,label\nr.jpg,REAL\nf.jpg,FAKE\ngone.jpg,FAKE\nalso-gone.jpg,REAL\n"
    listing = _manifest(text, ["r.jpg", "f.jpg", "unlisted.jpg"])
    assert [e.name for e in listing.entries] == ["r.jpg", "f.jpg"]
    assert listing.missing == ["gone.jpg", "also-gone.jpg"] and listing.ignored == ["unlisted.jpg"]
    assert "skipped 2 of its 4 rows whose file is not in the source, e.g. gone.jpg" in caplog.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "path,label\nr.jpg,REAL\nf.jpg,dog\n",
            r"^labels\.csv row 3: label 'dog' is not a class of \['REAL', 'FAKE'\], "
            r"an alias of one \(data\.aliases\), or a class index 0\.\.1$",
        ),
        ("path,label\nr.jpg,REAL\nf.jpg,2\n", r"^labels\.csv row 3: label '2' is not a class"),
        (
            "path,label,split\nr.jpg,REAL,train\nf.jpg,FAKE,holdout\n",
            r"^labels\.csv row 3: split 'holdout' is not one of",
        ),
        ("path,label\n../r.jpg,REAL\nf.jpg,FAKE\n", r"^labels\.csv row 2: path '\.\./r\.jpg' must be relative to the "),
        ("path,label\n/etc/r.jpg,REAL\nf.jpg,FAKE\n", r"^labels\.csv row 2: path '/etc/r\.jpg' must be relative"),
        ("path,label\nr.jpg,REAL\nf.jpg,FAKE\nr.jpg,FAKE\n", r"^labels\.csv row 4: r\.jpg is already listed on row 2$"),
        ("path,label\nr.jpg,REAL\nf.jpg\n", r"^labels\.csv row 3: 1 fields, the header has 2$"),
        (
            "path,label,split\nr.jpg,REAL,train\nf.jpg,FAKE,\n",
            r"^labels\.csv row 3: no split, while other rows have one",
        ),
        (
            "image_id,is_fake\nr.jpg,0\n",
            r"^labels\.csv: the first row must name a path column \(path or file_name\) and ",
        ),
        ("", r"^labels\.csv: the manifest is empty"),
        ('path,label\n"r.jpg,REAL\n', r"^labels\.csv row \d+: not valid CSV"),
        ("path,label\nr.jpg\0,REAL\n", r"^labels\.csv row 2: path 'r\.jpg\\x00' holds control characters$"),
        (
            "path,label\nr.jpg,REAL\nf.jpg,REAL\n",
            r"^labels\.csv: no row of class FAKE has its image file in the source$",
        ),
    ],
    ids=[
        "bad-label",
        "label-index-out-of-range",
        "bad-split",
        "parent-path",
        "absolute-path",
        "duplicate",
        "short-row",
        "mixed-split",
        "no-header",
        "empty",
        "bad-quoting",
        "nul-byte",
        "one-class",
    ],
)
def test_bad_manifest_rows_are_one_line_naming_file_and_row(text: str, message: str) -> None:
    with pytest.raises(DataLayoutError, match=message) as err:
        _manifest(text, ["r.jpg", "f.jpg"])
    assert "\n" not in str(err.value)


def test_manifest_with_no_file_present_says_paths_are_relative_to_root() -> None:
    with pytest.raises(
        DataLayoutError,
        match=r"none of its 2 rows names a file in the source \(e\.g\. x/r\.jpg\); "
        r"paths must be relative to data\.root$",
    ):
        _manifest("path,label\nx/r.jpg,REAL\nx/f.jpg,FAKE\n", ["r.jpg", "f.jpg"])


# --------------------------------------------------------------------------------------- through Source.list


MANIFEST = "file_name,label,source\nimgs/r.png,0,flickr\nimgs/f.png,1,sdxl\n"


def test_source_list_reads_a_manifest_from_a_folder_a_zip_and_an_absolute_path(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", ["imgs/r.png", "imgs/f.png"])
    (root / "labels.csv").write_text(MANIFEST)
    zipped, tarred = tmp_path / "data.zip", tmp_path / "data.tar.gz"
    with zipfile.ZipFile(zipped, "w") as zf, tarfile.open(tarred, "w:gz") as tf:
        for name in ("imgs/r.png", "imgs/f.png", "labels.csv"):
            zf.write(root / name, name)
            tf.add(root / name, name)
    expected = [Entry("imgs/r.png", "", 0, "flickr"), Entry("imgs/f.png", "", 1, "sdxl")]
    for path, manifest in (
        (root, "labels.csv"),
        (zipped, "labels.csv"),
        (tarred, "labels.csv"),
        (root, str(root / "labels.csv")),
    ):
        assert Source.open(path).list(CLASSES, manifest=manifest).entries == expected


def test_source_list_flat_folders_take_the_class_as_source(tmp_path: Path) -> None:
    """web60's layout: the root's own name is no generator."""
    root = _tree(tmp_path / "web60", ["REAL/a.jpg", "FAKE/b.jpg"])
    assert Source.open(root).list(CLASSES).entries == [
        Entry("FAKE/b.jpg", "", 1, "FAKE"),
        Entry("REAL/a.jpg", "", 0, "REAL"),
    ]


def test_source_list_missing_manifest_is_one_line(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", ["REAL/a.png", "FAKE/b.png"])
    with pytest.raises(
        DataLayoutError,
        match=r"^data\.manifest: cannot read .*data/nothing\.csv \(.*\); give a CSV "
        r"path relative to data\.root, or an absolute one$",
    ):
        Source.open(root).list(CLASSES, manifest="nothing.csv")
    (root / "latin1.csv").write_bytes("path,label\nREAL/a.png,réel\n".encode("latin-1"))
    with pytest.raises(DataLayoutError, match=r"latin1\.csv: the manifest is not UTF-8 text"):
        Source.open(root).list(CLASSES, manifest="latin1.csv")


def test_source_list_genimage_tree_on_disk(tmp_path: Path) -> None:
    root = _tree(tmp_path / "GenImage", GENIMAGE)
    listing = Source.open(root).list(CLASSES, layout="auto")
    assert {e.source for e in listing.entries} == {"imagenet_ai_0419_sdv4", "imagenet_ai_0508_adm"}
    assert {e.split for e in listing.entries} == {"train", "test"}
