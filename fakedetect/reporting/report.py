"""The evaluation report: metrics, curves, calibration and the most confident mistakes, as files and TensorBoard."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torchmetrics.classification import (
    BinaryAveragePrecision,
    BinaryCalibrationError,
    BinaryConfusionMatrix,
    BinaryPrecisionRecallCurve,
    BinaryROC,
)
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from fakedetect.reporting.figures import log_figure, plt

CLASSES = ("REAL", "FAKE")


def threshold_metrics(probs: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, float]:
    """Accuracy and per-class precision, recall and F1 when FAKE is called at probs >= threshold."""
    preds = (probs >= threshold).long()
    out = {"threshold": threshold, "acc": float(binary_accuracy(preds, labels))}
    for name, fn in (("precision", multiclass_precision), ("recall", multiclass_recall), ("f1", multiclass_f1_score)):
        values = fn(preds, labels, num_classes=2, average=None)
        out.update({f"{name}_{cls}": float(v) for cls, v in zip(CLASSES, values, strict=True)})
    return out


def reliability_figure(probs: np.ndarray, labels: np.ndarray, ece: float, bins: int = 15) -> Figure:
    """Observed frequency of FAKE against predicted probability, per bin (the diagonal is calibrated)."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probs, edges) - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    observed = np.bincount(which, weights=labels, minlength=bins) / np.maximum(counts, 1)
    centres = (edges[:-1] + edges[1:]) / 2
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.bar(centres[counts > 0], observed[counts > 0], width=1 / bins, edgecolor="black", alpha=0.7, label="observed")
    ax.plot([0, 1], [0, 1], "k--", label="calibrated")
    ax.set(xlabel="predicted probability of FAKE", ylabel="fraction FAKE", title=f"Reliability (ECE {ece:.4f})",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend()
    return fig


def mistakes_figure(images: torch.Tensor, probs: np.ndarray, labels: np.ndarray, per_kind: int = 8) -> Figure:
    """The most confident false positives (REAL called FAKE) and false negatives (FAKE called REAL)."""
    wrong_real = np.flatnonzero((labels == 0) & (probs >= 0.5))
    wrong_fake = np.flatnonzero((labels == 1) & (probs < 0.5))
    rows = [("REAL called FAKE", wrong_real[np.argsort(-probs[wrong_real])][:per_kind]),
            ("FAKE called REAL", wrong_fake[np.argsort(probs[wrong_fake])][:per_kind])]
    fig, axes = plt.subplots(2, per_kind, figsize=(1.6 * per_kind, 4), squeeze=False)
    for r, (title, idx) in enumerate(rows):
        for c in range(per_kind):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(idx):
                ax.imshow(images[idx[c]].permute(1, 2, 0).squeeze().numpy(), cmap="gray")
                ax.set_title(f"p(FAKE)={probs[idx[c]]:.3f}", fontsize=8)
        axes[r][0].text(-0.1, 0.5, title, transform=axes[r][0].transAxes, rotation=90, va="center", ha="right")
    fig.suptitle("Most confident mistakes")
    return fig


def write_report(
    folder: Path,
    probs: np.ndarray,
    labels: np.ndarray,
    images: torch.Tensor,
    thresholds: dict[str, float],
    loggers: Iterable[object] = (),
) -> dict:
    """Write metrics.json, report.md and PNG figures to `folder`; the same figures go to the loggers.

    `thresholds` maps a name (0.5, youden, f1) to a value chosen on the validation split.
    """
    folder.mkdir(parents=True, exist_ok=True)
    loggers = list(loggers)
    p, y = torch.from_numpy(probs).float(), torch.from_numpy(labels).long()
    ece = float(BinaryCalibrationError(n_bins=15)(p, y))
    summary = {
        "n": len(y),
        "auroc": float(binary_auroc(p, y)),
        "average_precision": float(BinaryAveragePrecision()(p, y)),
        "ece": ece,
        "at_threshold": {name: threshold_metrics(p, y, t) for name, t in thresholds.items()},
    }
    figures: dict[str, Figure] = {}
    for name, metric in (("confusion_matrix", BinaryConfusionMatrix()), ("roc", BinaryROC()),
                         ("precision_recall", BinaryPrecisionRecallCurve())):
        metric.update(p, y)
        figures[name] = metric.plot(**({"labels": list(CLASSES)} if name == "confusion_matrix" else {"score": True}))[0]
    figures["reliability"] = reliability_figure(probs, labels, ece)
    figures["mistakes"] = mistakes_figure(images, probs, labels)
    for name, fig in figures.items():
        fig.savefig(folder / f"{name}.png", dpi=120, bbox_inches="tight")
        log_figure(loggers, f"report/{name}", fig, 0)
    (folder / "metrics.json").write_text(json.dumps(summary, indent=2))
    (folder / "report.md").write_text(_markdown(summary, list(figures)))
    return summary


def _markdown(summary: dict, figures: list[str]) -> str:
    lines = [
        "# Evaluation report",
        "",
        f"{summary['n']} images; AUROC {summary['auroc']:.4f}, average precision {summary['average_precision']:.4f}, "
        f"expected calibration error {summary['ece']:.4f}.",
        "",
        "| threshold | value | accuracy | precision REAL | recall REAL | F1 REAL | precision FAKE | recall FAKE "
        "| F1 FAKE |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in summary["at_threshold"].items():
        cells = [m[k] for k in ("acc", "precision_REAL", "recall_REAL", "f1_REAL", "precision_FAKE", "recall_FAKE",
                                "f1_FAKE")]
        lines.append(f"| {name} | {m['threshold']:.4f} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
    lines += ["", *[f"![{name}]({name}.png)" for name in figures], ""]
    return "\n".join(lines)
