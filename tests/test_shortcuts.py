"""The shortcut audit: JPEG quality from quantization tables, the single-attribute rules, and `audit`'s
warnings on generated sets where the format, the size or the JPEG quality gives the class away, and on a balanced
set where nothing does."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fakedetect.tools.audit.dataset import audit
from fakedetect.tools.audit.shortcuts import header_facts, jpeg_quality, lookup_accuracy, threshold_accuracy
from tests.conftest import assert_one_line, run_command
from tests.test_data import _write_tree

CLASSES = ["REAL", "FAKE"]


def _image(size: tuple[int, int], fmt: str, seed: int, **params: object) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, fmt, **params)
    return buf.getvalue()


@pytest.mark.parametrize("quality", [5, 30, 50, 75, 90, 95, 100])
def test_jpeg_quality_is_read_back_from_the_tables(quality: int) -> None:
    for mode in ("RGB", "L"):
        buf = io.BytesIO()
        Image.new(mode, (16, 16)).save(buf, "JPEG", quality=quality)
        assert header_facts(buf.getvalue())["quality"] == quality


def test_header_facts_upright_size_format_and_errors() -> None:
    img = Image.new("RGB", (40, 20))
    exif = img.getexif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80, exif=exif)
    assert header_facts(buf.getvalue()) == {"w": 20, "h": 40, "format": "JPEG", "mode": "RGB", "quality": 80}
    assert header_facts(_image((8, 6), "PNG", 0)) == {"w": 8, "h": 6, "format": "PNG", "mode": "RGB", "quality": None}
    assert header_facts(b"not an image")["error"].startswith("UnidentifiedImageError")
    # headers only: a file cut short after its header still tells its size (decoding it would fail)
    for fmt, params in (("PNG", {}), ("JPEG", {"quality": 60})):
        data = _image((300, 200), fmt, 1, **params)
        assert header_facts(data[: len(data) // 3])["w"] == 300
    assert jpeg_quality({0: [1] * 10}) is None  # not a 64-entry table


def test_rules_score_separation_not_unique_values() -> None:
    labels = np.array([0] * 6 + [1] * 6)
    assert lookup_accuracy(["JPEG"] * 6 + ["PNG"] * 6, labels, 2) == 1.0
    assert lookup_accuracy(["JPEG"] * 12, labels, 2) == 0.5
    assert lookup_accuracy([f"{i}x{i}" for i in range(12)], labels, 2) == 0.5  # every size unique: no information
    assert threshold_accuracy([70, 75, 80, 72, 74, 79, 95, 96, 98, 99, 97, 100], labels) == 1.0
    assert threshold_accuracy([70, 95] * 6, labels) == 0.5


def test_format_shortcut_warns_naming_attribute_counts_and_why(tmp_path: Path) -> None:
    root = _write_tree(
        tmp_path / "data",
        {
            **{f"REAL/{i}.jpg": _image((32 + i, 24), "JPEG", i, quality=85) for i in range(6)},
            **{f"FAKE/{i}.png": _image((32 + i, 24), "PNG", 10 + i) for i in range(6)},
        },
    )
    result = audit(str(root), CLASSES, tmp_path / "audit", workers=1, decode=False)
    shortcuts = result["shortcuts"]
    assert shortcuts["separation"]["format"] == 1.0 and shortcuts["separation"]["size"] == 0.5
    format_lines = [w for w in shortcuts["warnings"] if w.startswith("format ")]
    assert format_lines == [
        "format alone separates the classes (balanced accuracy 1.00): REAL (6 images): JPEG x6; "
        "FAKE (6 images): PNG x6. Why it matters: the detector can learn the file format (and its "
        "compression), not the generator; make the classes alike in it (re-encode, resize or crop "
        "both the same way) or test on data where it carries no label"
    ]
    assert not any(w.startswith(("size", "width", "aspect")) for w in shortcuts["warnings"])
    assert shortcuts["per_class"]["REAL"]["jpeg_quality"] == {"min": 85.0, "median": 85.0, "max": 85.0}
    assert shortcuts["per_class"]["FAKE"]["formats"] == {"PNG": 6}
    markdown = (tmp_path / "audit" / "audit.md").read_text()
    assert "**format alone separates the classes" in markdown and "| FAKE | 6 | PNG 6 |" in markdown
    assert json.loads((tmp_path / "audit" / "audit.json").read_text())["shortcuts"]["warnings"] == shortcuts["warnings"]


def test_size_and_quality_shortcuts_warn(tmp_path: Path) -> None:
    """Every FAKE 64x64 at quality 95, photos of varied sizes at quality 70-80: both separate the classes."""
    root = _write_tree(
        tmp_path / "data",
        {
            **{f"REAL/{i}.jpg": _image((40 + 3 * i, 30 + i), "JPEG", i, quality=70 + 2 * i) for i in range(6)},
            **{f"FAKE/{i}.jpg": _image((64, 64), "JPEG", 10 + i, quality=95) for i in range(6)},
        },
    )
    warnings = audit(str(root), CLASSES, tmp_path / "audit", workers=1, decode=False)["shortcuts"]["warnings"]
    attributes = {w.split(" ")[0] for w in warnings}
    assert {"size", "width", "jpeg_quality"} <= attributes and "format" not in attributes
    assert (
        "(balanced accuracy 1.00): REAL (6 images): 70 to 80; FAKE (6 images): 95 to 95. Why it matters: the "
        "detector can learn the compression strength"
    ) in next(w for w in warnings if w.startswith("jpeg_quality"))
    assert "REAL (6 images): 40x30 x1, 43x31 x1, 46x32 x1, other x3; FAKE (6 images): 64x64 x6." in next(
        w for w in warnings if w.startswith("size")
    )


def test_balanced_set_has_no_shortcut_warning(tmp_path: Path) -> None:
    """Both classes share every format, size and quality: nothing fires, even with the pixel audit on."""
    files = {}
    for c, cls in enumerate(CLASSES):
        for i, (fmt, suffix, params) in enumerate(
            [
                ("JPEG", "jpg", {"quality": 80}),
                ("JPEG", "jpg", {"quality": 90}),
                ("PNG", "png", {}),
                ("WEBP", "webp", {"lossless": True}),
            ]
        ):
            for j, size in enumerate([(32, 32), (48, 32)]):
                files[f"train/{cls}/{i}_{j}.{suffix}"] = _image(size, fmt, 100 * c + 10 * i + j, **params)
                files[f"test/{cls}/{i}_{j}.{suffix}"] = _image(size, fmt, 500 + 100 * c + 10 * i + j, **params)
    root = _write_tree(tmp_path / "data", files)
    result = audit(str(root), CLASSES, tmp_path / "audit", workers=1)
    assert result["shortcuts"]["warnings"] == []
    assert max(result["shortcuts"]["separation"].values()) == 0.5
    assert (
        "byte_identical" in result
        and "None: no attribute alone predicts the class" in (tmp_path / "audit" / "audit.md").read_text()
    )


def test_per_source_shortcut_of_one_generator(tmp_path: Path) -> None:
    """GenImage-style: one of two generators is all PNG. Over all images the format stays below the bar (half the
    FAKE images are JPEG like the photos); for that generator against the photos it separates, and is named."""
    files = {}
    for g, gen in enumerate(("midjourney", "sdxl")):
        for split in ("train", "val"):
            for i in range(4):
                seed = 100 * g + 10 * (split == "val") + i
                files[f"{gen}/{split}/nature/{i}.jpg"] = _image((32, 32), "JPEG", seed, quality=90)
                files[f"{gen}/{split}/ai/{i}.{'png' if gen == 'midjourney' else 'jpg'}"] = (
                    _image((32, 32), "PNG", 1000 + seed)
                    if gen == "midjourney"
                    else _image((32, 32), "JPEG", 1000 + seed, quality=90)
                )
    root = _write_tree(tmp_path / "data", files)
    shortcuts = audit(str(root), CLASSES, tmp_path / "audit", workers=1, decode=False)["shortcuts"]
    assert set(shortcuts["per_source"]) == {"midjourney", "sdxl"}
    assert shortcuts["separation"]["format"] == 0.75
    assert [w.split(":")[0] for w in shortcuts["warnings"] if w.startswith("format")] == [
        "format alone separates FAKE of source midjourney from the other classes (balanced accuracy 1.00)"
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["data.manifest=labels.csv"], "labels.csv row 3: label 'dog' is not a class of ['REAL', 'FAKE']"),
        (["shortcut_threshold=2"], "shortcut_threshold must be a balanced accuracy in [0.5, 1], got 2"),
    ],
    ids=["bad-manifest-row", "bad-threshold"],
)
def test_audit_command_bad_input_is_one_line(args: list[str], expected: str, tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "data", {"a.png": _image((8, 8), "PNG", 0), "b.png": _image((8, 8), "PNG", 1)})
    (root / "labels.csv").write_text("path,label\na.png,REAL\nb.png,dog\n")
    done = run_command(
        "audit",
        f"data.root={root}",
        *args,
        "decode=false",
        "workers=1",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=120,
    )
    assert_one_line(done, expected)
