"""`python -m fakedetect.predict ckpt_path=... input=<file | folder | glob>`: classify anyone's own images.

Images of any size, format and mode are decoded and resized as the checkpoint's training data was, then
normalized with its statistics; an unreadable file gets its own row with the error and the run goes on.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from rich.progress import track
from torch.utils.data import DataLoader, Dataset

from fakedetect.data.decode import decode_image
from fakedetect.data.sources import IMAGE_SUFFIXES
from fakedetect.utils.checkpoint import load_trained
from fakedetect.utils.errors import one_line_errors

log = logging.getLogger(__name__)

FIELDS = ["path", "prob_fake", "label", "threshold", "error"]


def expand_input(spec: str) -> list[Path]:
    """A file as given; a folder's images, recursively; otherwise a glob pattern's images. Sorted."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    found = path.rglob("*") if path.is_dir() else map(Path, glob.glob(str(path), recursive=True))
    files = sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images found for input={spec} (a file, a folder or a glob pattern)")
    return files


class ImageFiles(Dataset):
    """Decoded files at the training resolution, or the decoder's error for a file that cannot be read."""

    def __init__(self, paths: list[Path], resolution: int) -> None:
        self.paths, self.resolution = paths, resolution

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str]:
        try:
            return i, decode_image(self.paths[i].read_bytes(), self.resolution), ""
        except Exception as err:  # noqa: BLE001 - any failure to read or decode is reported on the file's row
            return i, None, f"{type(err).__name__}: {err}"


def collate(items: list[tuple[int, np.ndarray | None, str]]) -> tuple[list[int], torch.Tensor | None, dict]:
    """(indices of decoded files, their uint8 NCHW batch or None, {index: error} for the others)."""
    good = [(i, image) for i, image, _ in items if image is not None]
    images = torch.from_numpy(np.stack([image for _, image in good])).permute(0, 3, 1, 2) if good else None
    return [i for i, _ in good], images, {i: error for i, image, error in items if image is None}


def resolve_device(device: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)


def predict(cfg: DictConfig) -> list[dict]:
    """Score every input image; writes and returns one row per file, errors included."""
    trained = load_trained(cfg.ckpt_path)
    datamodule, device = trained.datamodule, resolve_device(cfg.device)
    model = trained.model.to(device)
    threshold = float(cfg.threshold if cfg.threshold is not None else model.decision_threshold)
    negative, positive = datamodule.classes
    paths = expand_input(str(cfg.input))
    loader = DataLoader(ImageFiles(paths, datamodule.resolution), batch_size=cfg.batch_size,
                        num_workers=cfg.num_workers, collate_fn=collate, pin_memory=device.type == "cuda")
    rows: list[dict] = [{} for _ in paths]
    with torch.inference_mode():
        for indices, images, errors in track(loader, description=f"predicting {len(paths)} images"):
            for i, error in errors.items():
                rows[i] = {"path": str(paths[i]), "prob_fake": None, "label": None, "threshold": threshold,
                           "error": error}
            if images is None:
                continue
            probs = model(datamodule.preprocess(images.to(device, non_blocking=True))).float().sigmoid()
            for i, prob in zip(indices, probs.tolist(), strict=True):
                rows[i] = {"path": str(paths[i]), "prob_fake": prob, "label": positive if prob > threshold
                           else negative, "threshold": threshold, "error": None}
    write_rows(rows, Path(cfg.output))
    bad = sum(1 for row in rows if row["error"])
    log.info("%d images scored, %d unreadable; written to %s", len(rows) - bad, bad, cfg.output)
    return rows


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


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@one_line_errors
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
