"""`python -m fakedetect.predict ckpt_path=... input=<file | folder | glob>`: classify anyone's own images.

Images of any size, format and mode are decoded and resized as the checkpoint's training data was, then
scored by the one scorer eval uses; an unreadable file gets its own row with the error and the run goes on.
The output is checked (writable, not an existing file unless `overwrite=true`) before anything is scored.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from rich.progress import track
from torch.utils.data import DataLoader, Dataset

from fakedetect.data.decode import decode_image
from fakedetect.data.sources import IMAGE_SUFFIXES
from fakedetect.metrics.thresholds import decide
from fakedetect.reporting.predictions import choose_tta, score
from fakedetect.utils.checkpoint import load_trained
from fakedetect.utils.errors import ConfigError, one_line_errors

log = logging.getLogger(__name__)

FIELDS = ["path", "prob_fake", "label", "threshold", "error"]


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
        raise ConfigError(f"no images found for input={spec} (a file, a folder or a glob pattern of "
                          f"{', '.join(sorted(IMAGE_SUFFIXES))} files; {len(files)} other files)")
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
    output = Path(cfg.output)
    check_output(output, bool(cfg.get("overwrite")))
    paths, ignored = expand_input(str(cfg.input))
    if ignored:
        log.info("ignored %d files under input=%s that are not images (%s)", ignored, cfg.input,
                 " ".join(sorted(IMAGE_SUFFIXES)))
    trained = load_trained(cfg.ckpt_path)
    datamodule, model = trained.datamodule, trained.model
    choose_tta(model, cfg.get("tta"))
    threshold = model.decision_threshold if cfg.threshold is None else cfg.threshold
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
        raise ConfigError(f"threshold={cfg.threshold} must be a probability in [0, 1], or null for the checkpoint's")
    threshold = float(threshold)
    device = resolve_device(cfg.device)
    loader = DataLoader(ImageFiles(paths, datamodule.resolution), batch_size=cfg.batch_size,
                        num_workers=cfg.num_workers, collate_fn=collate, pin_memory=device.type == "cuda")
    rows: list[dict] = [{"path": str(path), "prob_fake": None, "label": None, "threshold": threshold, "error": None}
                        for path in paths]
    batches = decoded(track(loader, description=f"predicting {len(paths)} images"), rows)
    probs, indices, _ = score(model, batches, datamodule.preprocess, device)
    for i, prob, decision in zip(indices.tolist(), probs.tolist(), decide(probs, threshold).tolist(), strict=True):
        rows[i].update(prob_fake=prob, label=datamodule.classes[decision])
    write_rows(rows, output)
    bad = sum(1 for row in rows if row["error"])
    log.info("%d images scored, %d unreadable; written to %s", len(rows) - bad, bad, output)
    return rows


def decoded(loader: Iterable[tuple[list[int], torch.Tensor | None, dict]], rows: list[dict]
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The scorer's (uint8 NCHW, file indices) batches; each unreadable file's error goes to its row."""
    for indices, images, errors in loader:
        for i, error in errors.items():
            rows[i]["error"] = error
        if images is not None:
            yield images, torch.tensor(indices)


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
