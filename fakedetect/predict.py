"""`python -m fakedetect.predict ckpt_path=... input=<file | folder | glob>`: classify anyone's own images.

Images of any size, format (HEIC phone photos too) and mode are decoded by the checkpoint's `data.fit` (or
`fit=`), as its training data was (`data/loaders/files.py`), then scored by the detector's predict step in
Lightning's predict loop; an unreadable file gets its own row with the error and the run goes on. `crops=5` or
`crops=tiles` scores several windows of a large image at its own pixels instead and averages their P(FAKE).
The output is checked (writable, not an existing file unless `overwrite=true`) before anything is scored.
"""

from __future__ import annotations

import csv
import json
import logging
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig
from rich.progress import track

from fakedetect.data.decode import check_fit
from fakedetect.data.layouts import IMAGE_SUFFIXES
from fakedetect.data.loaders.files import FileBatches, check_crops, expand_input, file_loader
from fakedetect.metrics.thresholds import decide
from fakedetect.utils.app import command
from fakedetect.utils.checkpoint import load_trained
from fakedetect.utils.device import device_trainer
from fakedetect.utils.errors import ConfigError, is_number
from fakedetect.utils.files import atomic_path, write_atomic
from fakedetect.utils.signals import doing

log = logging.getLogger(__name__)

FIELDS = ["path", "prob_fake", "label", "threshold", "crops", "error"]


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
    trained = load_trained(cfg.ckpt_path, data={"fit": cfg.fit}, trust=cfg.get("trust"))
    datamodule, model = trained.datamodule, trained.model
    trained.choose_tta(cfg.get("tta"))
    threshold = model.decision_threshold if cfg.threshold is None else cfg.threshold
    if not (is_number(threshold) and 0 <= threshold <= 1):
        raise ConfigError(f"threshold={cfg.threshold} must be a probability in [0, 1], or null for the checkpoint's")
    threshold = float(threshold)
    trainer = device_trainer(cfg.device)
    # decoded as the checkpoint's data module decodes: its resolution, fit (or fit=), pixel and file size limits
    loader = file_loader(
        paths,
        datamodule.resolution,
        datamodule.fit,
        datamodule.max_pixels,
        datamodule.max_file_bytes,
        crops,
        cfg.max_tiles,
        cfg.batch_size,
        cfg.num_workers,
        pin_memory=trainer.strategy.root_device.type == "cuda",
    )
    batches = FileBatches(track(loader, description=f"predicting {len(paths)} images"))
    with doing(f"scoring {len(paths)} images for {output}", f"{output} was left as it was"):
        predicted = trainer.predict(model, dataloaders=batches) or []
    owners = torch.cat(batches.owners) if batches.owners else torch.empty(0, dtype=torch.long)
    window_probs = torch.cat([p.cpu() for p in predicted]) if predicted else torch.empty(0)  # type: ignore[union-attr]
    counts = torch.bincount(owners, minlength=len(paths))
    scored = torch.nonzero(counts).flatten()
    probs = torch.zeros(len(paths)).index_add_(0, owners, window_probs)[scored] / counts[scored]
    rows: list[dict] = [
        {"path": str(path), "prob_fake": None, "label": None, "threshold": threshold, "crops": None, "error": None}
        for path in paths
    ]
    for i, error in batches.errors.items():
        rows[i]["error"] = error
    for i, prob, decision, n in zip(
        scored.tolist(), probs.tolist(), decide(probs, threshold).tolist(), counts[scored].tolist(), strict=True
    ):
        rows[i].update(prob_fake=prob, label=datamodule.classes[decision], crops=n)
    with doing(f"writing {output}", f"{output} was left as it was"):
        write_rows(rows, output)
    bad = sum(1 for row in rows if row["error"])
    log.info("%d images scored, %d unreadable; written to %s", len(rows) - bad, bad, output)
    return rows


def write_rows(rows: list[dict], path: Path) -> None:
    """JSON (a list of rows) for a .json path, else CSV with empty cells for missing values."""
    if path.suffix.lower() == ".json":
        write_atomic(path, json.dumps(rows, indent=1))
        return
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


@command("predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
