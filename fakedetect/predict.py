"""`python -m fakedetect.predict ckpt_path=... input=<file | folder | glob>`: classify anyone's own images.

Images of any size, format (HEIC phone photos too) and mode are decoded by the checkpoint's `data.fit` (or
`fit=`), as its training data was, then scored by the one scorer eval uses; an unreadable file gets its own row with
the error and the run goes on. `crops=5` or `crops=tiles` scores several windows of a large image at its own
pixels instead and averages their P(FAKE).
The output is checked (writable, not an existing file unless `overwrite=true`) before anything is scored.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from rich.progress import track
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import five_crop

from fakedetect.data.decode import DEFAULT_MAX_PIXELS, check_fit, cover, decode_image, open_image, to_rgb
from fakedetect.data.layouts import IMAGE_SUFFIXES
from fakedetect.metrics.thresholds import decide
from fakedetect.utils.app import command
from fakedetect.utils.checkpoint import load_trained
from fakedetect.utils.device import device_trainer
from fakedetect.utils.errors import ConfigError, is_int, is_number

log = logging.getLogger(__name__)

FIELDS = ["path", "prob_fake", "label", "threshold", "crops", "error"]
# crops=: 1 (the image as `fit` makes it), 5 (torchvision's five_crop) or tiles (a grid of non-overlapping windows)
CROPS = (1, 5, "tiles")


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


def check_output(path: Path, overwrite: bool) -> None:
    """Fail before scoring, not after: the output must be a new (or, with overwrite, a replaceable) file in a
    folder this process can write."""
    if path.is_dir():
        raise ConfigError(f"output={path} is a folder; name a .csv or .json file")
    if path.exists() and not overwrite:
        raise ConfigError(f"output={path} exists; pass overwrite=true to replace it, or name another output=")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as err:
        raise ConfigError(f"output={path} cannot be written ({err.strerror or err}); name another output=") from None


def views(
    data: bytes,
    resolution: int,
    fit: str = "squash",
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
    """Each file's windows to score (`windows(file bytes)`, a `views`), or the decoder's error for a file that
    cannot be read."""

    def __init__(self, paths: list[Path], windows: Callable[[bytes], Tensor]) -> None:
        self.paths, self.windows = paths, windows

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, str]:
        try:
            return i, self.windows(self.paths[i].read_bytes()), ""
        except Exception as err:  # noqa: BLE001 - any failure to read or decode is reported on the file's row
            return i, None, f"{type(err).__name__}: {err}"


def collate(items: list[tuple[int, Tensor | None, str]]) -> tuple[Tensor, Tensor | None, dict]:
    """(the file index of every window, the windows as one uint8 NCHW batch or None, {index: error} for the
    files that could not be decoded)."""
    good = [(i, image) for i, image, _ in items if image is not None]
    images = torch.cat([image for _, image in good]) if good else None
    owners = torch.tensor([i for i, image in good for _ in range(len(image))], dtype=torch.long)
    return owners, images, {i: error for i, image, error in items if image is None}


def check_crops(crops: object, max_tiles: object) -> int | str:
    if crops not in CROPS or isinstance(crops, bool):
        raise ConfigError(f"crops={crops} must be 1 (the image as fit= makes it), 5 (corners and centre) or tiles")
    if crops == "tiles" and not (is_int(max_tiles) and max_tiles >= 1):
        raise ConfigError(f"max_tiles={max_tiles} must be a positive integer (the most tiles scored per image)")
    return crops


def predict(cfg: DictConfig) -> list[dict]:
    """Score every input image; writes and returns one row per file, errors included."""
    output = Path(cfg.output)
    check_output(output, bool(cfg.get("overwrite")))
    crops = check_crops(cfg.crops, cfg.max_tiles)
    if cfg.fit is not None:
        check_fit(cfg.fit, "fit")
    paths, ignored = expand_input(str(cfg.input))
    if ignored:
        log.info(
            "ignored %d files under input=%s that are not images (%s)",
            ignored,
            cfg.input,
            " ".join(sorted(IMAGE_SUFFIXES)),
        )
    trained = load_trained(cfg.ckpt_path, data={"fit": cfg.fit})
    datamodule, model = trained.datamodule, trained.model
    trained.choose_tta(cfg.get("tta"))
    threshold = model.decision_threshold if cfg.threshold is None else cfg.threshold
    if not (is_number(threshold) and 0 <= threshold <= 1):
        raise ConfigError(f"threshold={cfg.threshold} must be a probability in [0, 1], or null for the checkpoint's")
    threshold = float(threshold)
    trainer = device_trainer(cfg.device)
    per_file = 1 if crops == 1 else 5 if crops == 5 else cfg.max_tiles
    # decoded as the checkpoint's data module decodes: its resolution, fit (or fit=) and pixel limit
    files = ImageFiles(
        paths,
        partial(
            views,
            resolution=datamodule.resolution,
            fit=datamodule.fit,
            crops=crops,
            max_pixels=datamodule.max_pixels,
            max_tiles=cfg.max_tiles,
        ),
    )
    # about batch_size windows per forward pass, however many each file gives
    loader = DataLoader(
        files,
        batch_size=max(1, cfg.batch_size // per_file),
        num_workers=cfg.num_workers,
        collate_fn=collate,
        pin_memory=trainer.strategy.root_device.type == "cuda",
    )
    rows: list[dict] = [
        {"path": str(path), "prob_fake": None, "label": None, "threshold": threshold, "crops": None, "error": None}
        for path in paths
    ]
    batches = DecodedWindows(track(loader, description=f"predicting {len(paths)} images"), rows)
    predicted = trainer.predict(model, dataloaders=batches) or []
    owners = torch.cat(batches.owners) if batches.owners else torch.empty(0, dtype=torch.long)
    window_probs = torch.cat([p.cpu() for p in predicted]) if predicted else torch.empty(0)  # type: ignore[union-attr]
    counts = torch.bincount(owners, minlength=len(paths))
    scored = torch.nonzero(counts).flatten()
    probs = torch.zeros(len(paths)).index_add_(0, owners, window_probs)[scored] / counts[scored]
    for i, prob, decision, n in zip(
        scored.tolist(), probs.tolist(), decide(probs, threshold).tolist(), counts[scored].tolist(), strict=True
    ):
        rows[i].update(prob_fake=prob, label=datamodule.classes[decision], crops=n)
    write_rows(rows, output)
    bad = sum(1 for row in rows if row["error"])
    log.info("%d images scored, %d unreadable; written to %s", len(rows) - bad, bad, output)
    return rows


class DecodedWindows:
    """The (uint8 NCHW windows,) batches `trainer.predict` scores, in order; each batch's file indices are kept in
    `owners`, and each unreadable file's error goes to its row."""

    def __init__(self, loader: Iterable[tuple[Tensor, Tensor | None, dict]], rows: list[dict]) -> None:
        self.loader, self.rows = loader, rows
        self.owners: list[Tensor] = []

    def __iter__(self) -> Iterator[tuple[Tensor]]:
        for owners, images, errors in self.loader:
            for i, error in errors.items():
                self.rows[i]["error"] = error
            if images is not None:
                self.owners.append(owners)
                yield (images,)


def write_rows(rows: list[dict], path: Path) -> None:
    """JSON (a list of rows) for a .json path, else CSV with empty cells for missing values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(rows, indent=1))
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


@command("predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
