"""Synthetic image trees for tests: several sizes, formats and sources, learnable yet tiny.

`write_tree` lays out ForenSynths-style split folders, `<split>/<source>/{0_real,1_fake}/<i>.<ext>`, so every image
carries its source (two generators and one real source by default) through the layout alone, and writes the same
files as a CSV manifest (`manifest.csv`: path,label,split,source) for the manifest layout. The classes differ in
colour (each generator its own tint) and texture (fakes carry a checkerboard, as GAN upsampling leaves), so a small
CNN learns them in a few batches; formats and sizes cycle independently of the class, so neither is a shortcut.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# source -> (label, mean RGB of its images)
SOURCES: dict[str, tuple[int, tuple[int, int, int]]] = {
    "camera": (0, (80, 110, 150)),
    "gen_a": (1, (160, 100, 80)),
    "gen_b": (1, (120, 160, 70)),
}
# (width, height): landscape, portrait-ish, square and one larger photo-like size
SIZES = [(128, 96), (120, 160), (200, 200), (480, 360)]
FORMATS = [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp")]
CLASS_FOLDERS = ("0_real", "1_fake")


def synthetic_image(
    rng: np.random.Generator, label: int, mean: tuple[int, int, int], size: tuple[int, int]
) -> np.ndarray:
    """(H, W, 3) uint8: a smooth colour field around `mean`, and for fakes a faint 2-px checkerboard."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3)
    colour = np.array(mean, np.float32) + rng.uniform(-20, 20, 3)
    field = colour + 25 * np.sin(x[..., None] / w * 3 + y[..., None] / h * 2 + phase)
    if label:
        field += 12 * (((x // 2 + y // 2) % 2)[..., None] - 0.5)
    return np.clip(field, 0, 255).astype(np.uint8)


def smooth_images(n: int, seed: int = 0, detail: int = 8) -> torch.Tensor:
    """(n, 3, 32, 32) uint8 noise drawn at `detail` px and upsampled: smooth as photos are (raw noise makes JPEG and
    blur behave unlike on photos), with detail that a round trip through fewer pixels loses."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 256, (n, 3, detail, detail), generator=g, dtype=torch.uint8).float()
    return torch.nn.functional.interpolate(small, size=32, mode="bilinear").round().to(torch.uint8)


def noise_photo(rng: np.random.Generator, width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Random pixels in any PIL mode (greyscale, RGBA, palette...): a file as a user might hand it in."""
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


def write_tree(
    root: Path, per_source: dict[str, int] | None = None, splits: tuple[str, ...] = ("train", "test"), seed: int = 0
) -> Path:
    """Write `per_source[split]` images of every source into each split under `root` (default: 12 train, 6 val
    and 6 test per source, the real source twice as many, so the classes are balanced), plus manifest.csv.
    Returns `root`."""
    counts = {"train": 12, "val": 6, "test": 6, **(per_source or {})}
    rng = np.random.default_rng(seed)
    rows = []
    k = 0
    for split in splits:
        for source, (label, mean) in SOURCES.items():
            folder = root / split / source / CLASS_FOLDERS[label]
            folder.mkdir(parents=True, exist_ok=True)
            n = counts[split] * (2 if label == 0 else 1)
            for i in range(n):
                fmt, suffix = FORMATS[k % len(FORMATS)]
                size = SIZES[(k // len(FORMATS)) % len(SIZES)]
                k += 1
                path = folder / f"{i}{suffix}"
                path.write_bytes(encode(synthetic_image(rng, label, mean, size), fmt))
                rows.append(
                    {
                        "path": path.relative_to(root).as_posix(),
                        "label": "FAKE" if label else "REAL",
                        "split": split,
                        "source": source,
                    }
                )
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split", "source"])
        writer.writeheader()
        writer.writerows(rows)
    return root
