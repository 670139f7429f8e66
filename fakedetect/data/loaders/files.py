"""A user's own image files (predict's input) decoded by DataLoader workers, as the stream loader decodes a
dataset's: each file as the checkpoint's data settings make it, or as several windows (five crops, tiles) whose
scores are averaged; an unreadable file comes back as `Unreadable` for its row, never a crash mid-run."""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import five_crop

from fakedetect.data.decode import DEFAULT_MAX_PIXELS, Fit, cover, decode_image, open_image, to_rgb
from fakedetect.data.layouts import IMAGE_SUFFIXES
from fakedetect.data.loaders.decoding import Unreadable
from fakedetect.data.sources import DEFAULT_MAX_FILE_BYTES, read_file
from fakedetect.utils.errors import ConfigError, is_int

# crops=: 1 (the image as `fit` makes it), 5 (torchvision's five_crop) or tiles (a grid of non-overlapping windows)
CROPS = (1, 5, "tiles")

Windows = tuple[int, Tensor]


def expand_input(spec: str) -> tuple[list[Path], int]:
    """(images, number of other files ignored): a file as given; a folder's images, recursively; otherwise a
    glob pattern's images. Sorted."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path], 0
    found = path.rglob("*") if path.is_dir() else map(Path, glob.glob(str(path), recursive=True))
    files = [p for p in found if p.is_file()]
    images = sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ConfigError(
            f"no images found for input={spec} (a file, a folder or a glob pattern of "
            f"{', '.join(sorted(IMAGE_SUFFIXES))} files; {len(files)} other files)"
        )
    return images, len(files) - len(images)


def check_crops(crops: object, max_tiles: object) -> int | str:
    if crops not in CROPS or isinstance(crops, bool):
        raise ConfigError(f"crops={crops} must be 1 (the image as fit= makes it), 5 (corners and centre) or tiles")
    if crops == "tiles" and not (is_int(max_tiles) and max_tiles >= 1):
        raise ConfigError(f"max_tiles={max_tiles} must be a positive integer (the most tiles scored per image)")
    return crops


def views(
    data: bytes,
    resolution: int,
    fit: str = Fit.SQUASH,
    crops: int | str = 1,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_tiles: int = 16,
) -> Tensor:
    """The uint8 (K, 3, resolution, resolution) windows of one image file that predict scores and averages:
    the image as `fit` makes it (crops=1); or, at the image's own pixels (scaled up only when its short side is
    under `resolution`), torchvision's five crops (corners and centre), or the non-overlapping tiles of the
    centred grid, at most `max_tiles` of them spread evenly over it."""
    if crops == 1:
        # a copy: PIL's arrays are read-only, and torch warns on a tensor over read-only memory
        return torch.from_numpy(decode_image(data, resolution, fit, max_pixels).copy()).permute(2, 0, 1)[None]
    with open_image(data, max_pixels) as img:
        image = torch.from_numpy(np.array(cover(to_rgb(img), resolution))).permute(2, 0, 1)
    if crops == 5:
        return torch.stack(five_crop(image, [resolution, resolution]))
    _, height, width = image.shape
    top, left = height % resolution // 2, width % resolution // 2
    grid = image[:, top : height - (height - top) % resolution, left : width - (width - left) % resolution]
    tiles = grid.unfold(1, resolution, resolution).unfold(2, resolution, resolution)  # (3, rows, cols, R, R)
    tiles = tiles.permute(1, 2, 0, 3, 4).reshape(-1, 3, resolution, resolution)
    if len(tiles) > max_tiles:
        tiles = tiles[np.linspace(0, len(tiles) - 1, max_tiles).round().astype(int)]
    return tiles.contiguous()


class ImageFiles(Dataset):
    """Each file's windows (`windows(file bytes)`, a `views`) with the file's index, or `Unreadable` with the
    reader's or decoder's error (its label is the file's index); a file over `max_bytes` is refused unread."""

    def __init__(
        self, paths: list[Path], windows: Callable[[bytes], Tensor], max_bytes: int | None = DEFAULT_MAX_FILE_BYTES
    ) -> None:
        self.paths, self.windows, self.max_bytes = paths, windows, max_bytes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Windows | Unreadable:
        try:
            return i, self.windows(read_file(self.paths[i], self.max_bytes))
        except Exception as err:  # noqa: BLE001 - any failure to read or decode is reported on the file's row
            return Unreadable(str(self.paths[i]), i, f"{type(err).__name__}: {err}")


def collate_windows(items: list[Windows | Unreadable]) -> tuple[Tensor, Tensor | None, list[Unreadable]]:
    """(the file index of every window, the windows as one uint8 NCHW batch or None, the unreadable files)."""
    good = [item for item in items if not isinstance(item, Unreadable)]
    images = torch.cat([windows for _, windows in good]) if good else None
    owners = torch.tensor([i for i, windows in good for _ in range(len(windows))], dtype=torch.long)
    return owners, images, [item for item in items if isinstance(item, Unreadable)]


class FileBatches:
    """The (uint8 NCHW windows,) batches `trainer.predict` scores, in file order; each batch's file indices are
    kept in `owners`, each unreadable file's error in `errors` (by file index)."""

    def __init__(self, loader: Iterable[tuple[Tensor, Tensor | None, list[Unreadable]]]) -> None:
        self.loader = loader
        self.owners: list[Tensor] = []
        self.errors: dict[int, str] = {}

    def __iter__(self) -> Iterator[tuple[Tensor]]:
        for owners, images, bad in self.loader:
            self.errors.update((item.label, item.reason) for item in bad)
            if images is not None:
                self.owners.append(owners)
                yield (images,)


def file_loader(
    paths: list[Path],
    resolution: int,
    fit: str,
    max_pixels: int | None,
    max_file_bytes: int | None,
    crops: int | str,
    max_tiles: int,
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
) -> DataLoader:
    """About `batch_size` windows per batch, however many each file gives."""
    per_file = 1 if crops == 1 else 5 if crops == 5 else max_tiles
    windows = partial(views, resolution=resolution, fit=fit, crops=crops, max_pixels=max_pixels, max_tiles=max_tiles)
    return DataLoader(
        ImageFiles(paths, windows, max_file_bytes),
        batch_size=max(1, batch_size // per_file),
        num_workers=num_workers,
        collate_fn=collate_windows,
        pin_memory=pin_memory,
    )
