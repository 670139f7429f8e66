"""Shortcut audit: file attributes (format, size, aspect ratio, colour mode, JPEG quality) that alone tell the classes
apart. Web-scraped sets often hold every AI image as a 1024 x 1024 PNG and every photograph as a camera JPEG; a
detector trained on them learns the file, not the generator, and fails on the first AI JPEG it meets.

Everything here reads image headers only (Pillow opens a file lazily: size, mode and quantization tables, no pixel
decoding), so it runs at the speed of reading the bytes, and the rules are pure functions over those facts.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from fakedetect.data.decode import FORMATS

# The example tables of the JPEG standard (ITU T.81 Annex K), natural order; libjpeg scales them by quality.
IJG_LUMINANCE = [
    16,
    11,
    10,
    16,
    24,
    40,
    51,
    61,
    12,
    12,
    14,
    19,
    26,
    58,
    60,
    55,
    14,
    13,
    16,
    24,
    40,
    57,
    69,
    56,
    14,
    17,
    22,
    29,
    51,
    87,
    80,
    62,
    18,
    22,
    37,
    56,
    68,
    109,
    103,
    77,
    24,
    35,
    55,
    64,
    81,
    104,
    113,
    92,
    49,
    64,
    78,
    87,
    103,
    121,
    120,
    101,
    72,
    92,
    95,
    98,
    112,
    100,
    103,
    99,
]
IJG_CHROMINANCE = [
    17,
    18,
    24,
    47,
    99,
    99,
    99,
    99,
    18,
    21,
    26,
    66,
    99,
    99,
    99,
    99,
    24,
    26,
    56,
    99,
    99,
    99,
    99,
    99,
    47,
    66,
    99,
    99,
    99,
    99,
    99,
    99,
] + [99] * 32
# a lossless file ranks above any JPEG quality in the quality rule
LOSSLESS_QUALITY = 101
SIZE_REASON = "the detector can learn the image size (its resampling traces or aspect distortion), not the generator"
# (attribute, why it matters), in report order
ATTRIBUTES = {
    "format": "the detector can learn the file format (and its compression), not the generator",
    "jpeg_quality": "the detector can learn the compression strength, not the generator",
    "mode": "the detector can learn the colour mode (greyscale, alpha, palette), not the generator",
    "size": SIZE_REASON,
    "width": SIZE_REASON,
    "height": SIZE_REASON,
    "pixels": SIZE_REASON,
    "aspect_ratio": "the detector can learn the aspect ratio (squashing distorts it differently), not the generator",
}
CATEGORICAL = ("format", "jpeg_quality", "mode", "size")
NUMERIC = ("jpeg_quality", "width", "height", "pixels", "aspect_ratio")


def _ijg_tables() -> np.ndarray:
    """(100, 2, 64): libjpeg's luminance and chrominance tables at quality 1..100 (jpeg_quality_scaling, baseline)."""
    q = np.arange(1, 101)
    scale = np.where(q < 50, 5000 // q, 200 - 2 * q)
    base = np.array([IJG_LUMINANCE, IJG_CHROMINANCE])
    return np.clip((base[None] * scale[:, None, None] + 50) // 100, 1, 255)


IJG_TABLES = _ijg_tables()


def jpeg_quality(quantization: Mapping[int, Sequence[int]]) -> int | None:
    """The libjpeg quality (1-100) whose scaled standard tables lie closest to the file's (mean absolute difference
    over its first two tables). Exact for libjpeg/Pillow/OpenCV output; an estimate for encoders with tables of
    their own (cameras, Photoshop). None without 64-entry tables."""
    tables = [np.asarray(quantization[k], dtype=np.int64) for k in sorted(quantization)[:2]]
    if not tables or any(t.shape != (64,) for t in tables):
        return None
    error = sum(np.abs(IJG_TABLES[:, i] - t).mean(-1) for i, t in enumerate(tables))
    return int(np.argmin(error)) + 1


def header_facts(data: bytes) -> dict:
    """Upright size, format, mode and JPEG quality of one image file, from its header (no pixel decoding), or the
    reason it cannot be opened."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nothing is decoded, so a decompression bomb is only a large number
            default, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(io.BytesIO(data), formats=FORMATS)
            finally:
                Image.MAX_IMAGE_PIXELS = default
            with img:
                width, height = img.size
                # EXIF orientations that turn the image a quarter; asked only where the header holds the EXIF
                # (PNG's getexif decodes the whole image to look for it after the pixels)
                has_exif = "exif" in img.info or img.format == "TIFF"
                if has_exif and img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                    width, height = height, width
                quality = (
                    jpeg_quality(img.quantization) if isinstance(img, JpegImageFile) and img.format == "JPEG" else None
                )
                return {"w": width, "h": height, "format": img.format, "mode": img.mode, "quality": quality}
    except Exception as err:  # noqa: BLE001 - an unreadable file is reported, not fatal
        return {"error": f"{type(err).__name__}: {' '.join(str(err).split())}"}


def attribute(facts: Sequence[dict], name: str) -> list:
    """One attribute's value per image (facts as `header_facts` returns them)."""
    if name == "size":
        return [f"{f['w']}x{f['h']}" for f in facts]
    if name == "width":
        return [f["w"] for f in facts]
    if name == "height":
        return [f["h"] for f in facts]
    if name == "pixels":
        return [f["w"] * f["h"] for f in facts]
    if name == "aspect_ratio":
        return [round(f["w"] / f["h"], 3) for f in facts]
    if name == "jpeg_quality":
        return [LOSSLESS_QUALITY if f["quality"] is None else f["quality"] for f in facts]
    return [f[name] for f in facts]


def lookup_accuracy(values: Sequence, labels: np.ndarray, n_classes: int) -> float:
    """Balanced accuracy of guessing each image's class from its value alone: the majority class among the images
    with that value, else (a tie, or no other image with that value) the overall majority. A value that one image
    has on its own (e.g. a unique size) carries no label, as it should."""
    counts: dict[object, np.ndarray] = defaultdict(lambda: np.zeros(n_classes, dtype=np.int64))
    for v, y in zip(values, labels, strict=True):
        counts[v][y] += 1
    totals = np.bincount(labels, minlength=n_classes)
    default = int(np.argmax(totals))
    correct = np.zeros(n_classes)
    for c in counts.values():
        best = np.flatnonzero(c == c.max())
        guess = int(best[0]) if len(best) == 1 else default
        if c.sum() == 1:
            correct[default] += c[default]
        else:
            correct[guess] += c[guess]
    present = totals > 0
    return float((correct[present] / totals[present]).mean())


def threshold_accuracy(values: Sequence[float], labels: np.ndarray) -> float:
    """Best balanced accuracy of one cut on a numeric attribute (`value <= t` one class, above the other); two
    classes only (0.5 otherwise)."""
    x, y = np.asarray(values, dtype=float), np.asarray(labels)
    if set(np.unique(y)) != {0, 1}:
        return 0.5
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    below0, below1 = np.cumsum(y == 0), np.cumsum(y == 1)
    n0, n1 = below0[-1], below1[-1]
    cut = np.r_[x[1:] != x[:-1], True]  # cuts only between different values
    left_is_0 = (below0 / n0 + (n1 - below1) / n1) / 2
    return float(np.maximum(left_is_0, 1 - left_is_0)[cut].max())


def separation(facts: Sequence[dict], labels: np.ndarray, n_classes: int) -> dict[str, float]:
    """For each attribute, the balanced accuracy with which it alone predicts the class (0.5 = no information for
    two balanced classes; 1.0 = it separates them)."""
    out = {}
    for name in ATTRIBUTES:
        values = attribute(facts, name)
        score = lookup_accuracy(values, labels, n_classes) if name in CATEGORICAL else 0.0
        if name in NUMERIC:
            score = max(score, threshold_accuracy(values, labels))
        out[name] = round(score, 4)
    return out


def _values_by_class(values: Sequence, labels: np.ndarray, classes: Sequence[str], numeric: bool) -> str:
    """Per class: its range (numeric) or its commonest values with counts."""
    parts = []
    for i, cls in enumerate(classes):
        mine = [v for v, y in zip(values, labels, strict=True) if y == i]
        if not mine:
            continue
        if numeric:
            parts.append(f"{cls} ({len(mine)} images): {min(mine)} to {max(mine)}")
        else:
            common = Counter(mine).most_common(3)
            rest = len(mine) - sum(n for _, n in common)
            listed = ", ".join(f"{v} x{n}" for v, n in common) + (f", other x{rest}" if rest else "")
            parts.append(f"{cls} ({len(mine)} images): {listed}")
    return "; ".join(parts)


def shortcut_warnings(
    facts: Sequence[dict], labels: np.ndarray, classes: Sequence[str], threshold: float, scope: str = "the classes"
) -> list[str]:
    """One line per attribute that alone predicts the class with balanced accuracy >= threshold: which attribute,
    how well, the classes' values, and why it matters."""
    lines = []
    for name, score in separation(facts, labels, len(classes)).items():
        if score < threshold:
            continue
        values = attribute(facts, name)
        shown = f"jpeg_quality ({LOSSLESS_QUALITY} = not JPEG)" if name == "jpeg_quality" else name
        numeric = name in NUMERIC and len(set(values)) > 5
        lines.append(
            f"{shown} alone separates {scope} (balanced accuracy {score:.2f}): "
            f"{_values_by_class(values, labels, classes, numeric)}. Why it matters: {ATTRIBUTES[name]}; "
            "make the classes alike in it (re-encode, resize or crop both the same way) or test on data "
            "where it carries no label"
        )
    return lines


def _range(x: Sequence[float]) -> dict[str, float] | None:
    return {"min": float(np.min(x)), "median": float(np.median(x)), "max": float(np.max(x))} if len(x) else None


def summarize(facts: Sequence[dict]) -> dict:
    """Count, commonest formats, modes and sizes, and the ranges of width, height, aspect ratio and JPEG quality."""
    qualities = [f["quality"] for f in facts if f["quality"] is not None]
    return {
        "images": len(facts),
        "formats": dict(Counter(attribute(facts, "format")).most_common(5)),
        "modes": dict(Counter(attribute(facts, "mode")).most_common(5)),
        "sizes": dict(Counter(attribute(facts, "size")).most_common(5)),
        "distinct_sizes": len(set(attribute(facts, "size"))),
        "width": _range(attribute(facts, "width")),
        "height": _range(attribute(facts, "height")),
        "aspect_ratio": _range(attribute(facts, "aspect_ratio")),
        "jpeg_quality": _range(qualities),
    }


def audit_shortcuts(
    facts: Sequence[dict], labels: Sequence[int], sources: Sequence[str], classes: Sequence[str], threshold: float = 0.9
) -> dict:
    """Per class and per source summaries, each attribute's separation of the classes, and the warnings: for all
    images, and for the images of each source in a class that has several sources (e.g. one generator's), against
    the images of the other classes."""
    y = np.asarray(labels, dtype=np.int64)
    out: dict[str, Any] = {
        "per_class": {
            cls: summarize([f for f, label in zip(facts, y, strict=True) if label == i])
            for i, cls in enumerate(classes)
            if (y == i).any()
        },
        "per_source": {
            s: summarize([f for f, src in zip(facts, sources, strict=True) if src == s]) for s in sorted(set(sources))
        },
        "separation": separation(facts, y, len(classes)),
        "threshold": threshold,
        "warnings": shortcut_warnings(facts, y, classes, threshold),
    }
    pairs = sorted({(src, int(label)) for src, label in zip(sources, y, strict=True)})
    for src, label in pairs:
        if sum(lab == label for _, lab in pairs) < 2:
            continue  # the only source of its class: the all-images check covers it
        keep = [i for i, (lab, s) in enumerate(zip(y, sources, strict=True)) if lab != label or s == src]
        out["warnings"] += shortcut_warnings(
            [facts[i] for i in keep],
            y[keep],
            classes,
            threshold,
            scope=f"{classes[label]} of source {src} from the other classes",
        )
    return out
