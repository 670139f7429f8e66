"""Accuracy and AUROC of a detector on the test split under real-world degradations (Wang et al. 2020)."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import binary_accuracy, binary_auroc

from fakedetect.data.degrade import degrade
from fakedetect.reporting.figures import log_figure, plt

DEFAULT_CONDITIONS = ("clean", "jpeg:95", "jpeg:75", "jpeg:50", "resize:0.5", "resize:0.25", "blur:0.5", "blur:1.0",
                      "noise:0.02", "noise:0.05")


def parse_condition(condition: str) -> tuple[str, float | None]:
    """'jpeg:75' -> ('jpeg', 75.0); 'clean' -> ('clean', None)."""
    if condition == "clean":
        return "clean", None
    kind, _, strength = condition.partition(":")
    if not strength:
        raise ValueError(f"robustness condition '{condition}' needs a strength, e.g. jpeg:75 or blur:1.0")
    return kind, float(strength)


def robustness_table(
    score: Callable[[torch.Tensor], np.ndarray],
    images: torch.Tensor,
    labels: np.ndarray,
    conditions: Iterable[str] = DEFAULT_CONDITIONS,
    threshold: float = 0.5,
    chunk: int = 4096,
) -> list[dict]:
    """One row per condition: the degraded test images scored by `score` (uint8 NCHW -> p(FAKE))."""
    y = torch.from_numpy(labels).long()
    rows = []
    for condition in conditions:
        kind, strength = parse_condition(condition)
        probs = np.concatenate([
            score(batch if strength is None else degrade(batch, kind, strength))
            for batch in images.split(chunk)
        ])
        p = torch.from_numpy(probs).float()
        rows.append({"condition": condition, "acc": float(binary_accuracy(p, y, threshold=threshold)),
                     "auroc": float(binary_auroc(p, y))})
    return rows


def write_robustness(folder: Path, rows: list[dict], loggers: Iterable[object] = ()) -> None:
    """robustness.csv, robustness.md and robustness.png in `folder`; the plot goes to the loggers too."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "robustness.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["condition", "acc", "auroc"])
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| condition | accuracy | AUROC |", "| --- | --- | --- |"]
    lines += [f"| {r['condition']} | {r['acc']:.4f} | {r['auroc']:.4f} |" for r in rows]
    (folder / "robustness.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(rows), 4))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["acc"] for r in rows], 0.4, label="accuracy")
    ax.bar(x + 0.2, [r["auroc"] for r in rows], 0.4, label="AUROC")
    ax.set_xticks(x, [r["condition"] for r in rows], rotation=45, ha="right")
    ax.set(ylim=(0.4, 1.0), title="Robustness to degradations")
    ax.legend()
    fig.savefig(folder / "robustness.png", dpi=120, bbox_inches="tight")
    log_figure(loggers, "report/robustness", fig, 0)
