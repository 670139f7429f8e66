"""The evaluation report: metrics, curves, calibration and the most confident mistakes, as files and TensorBoard."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
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

from fakedetect.metrics.thresholds import decide
from fakedetect.reporting.figures import log_figure, metric_figure, new_figure


def threshold_metrics(
    probs: torch.Tensor, labels: torch.Tensor, threshold: float, classes: Sequence[str]
) -> dict[str, float]:
    """Accuracy and per-class precision, recall and F1 of the decisions at `threshold`."""
    preds = decide(probs, threshold)
    out = {"threshold": threshold, "acc": float(binary_accuracy(preds, labels))}
    for name, fn in (("precision", multiclass_precision), ("recall", multiclass_recall), ("f1", multiclass_f1_score)):
        values = fn(preds, labels, num_classes=2, average=None)
        out.update({f"{name}_{cls}": float(v) for cls, v in zip(classes, values, strict=True)})
    return out


class ConfidentMistakes:
    """The `per_kind` most confident mistakes of each true class at `threshold`, kept while scoring (a `keep`
    of `score`), so the report never holds the split's images."""

    def __init__(self, threshold: float, per_kind: int = 8) -> None:
        self.threshold, self.per_kind = threshold, per_kind
        self.images: list[torch.Tensor | None] = [None, None]
        self.probs: list[torch.Tensor] = [torch.empty(0), torch.empty(0)]

    def __call__(self, images: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor) -> None:
        wrong = decide(probs, self.threshold) != labels
        for c in (0, 1):
            idx = (wrong & (labels == c)).nonzero().squeeze(1)
            kept, found = self.images[c], images[idx.to(images.device)].cpu()
            pool = found if kept is None else torch.cat([kept, found])
            p = torch.cat([self.probs[c], probs[idx]])
            # the surest wrong call first: highest P(FAKE) for a REAL image, lowest for a FAKE one
            top = (p if c == 0 else -p).argsort(descending=True, stable=True)[: self.per_kind]
            self.images[c], self.probs[c] = pool[top], p[top]


def reliability_figure(probs: np.ndarray, labels: np.ndarray, ece: float, positive: str, bins: int = 15) -> Figure:
    """Observed frequency of the positive class against its predicted probability, per bin (the diagonal is
    calibrated)."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probs, edges) - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    observed = np.bincount(which, weights=labels, minlength=bins) / np.maximum(counts, 1)
    centres = (edges[:-1] + edges[1:]) / 2
    fig = new_figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.bar(centres[counts > 0], observed[counts > 0], width=1 / bins, edgecolor="black", alpha=0.7, label="observed")
    ax.plot([0, 1], [0, 1], "k--", label="calibrated")
    ax.set(
        xlabel=f"predicted probability of {positive}",
        ylabel=f"fraction {positive}",
        title=f"Reliability (ECE {ece:.4f})",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend()
    return fig


def mistakes_figure(mistakes: ConfidentMistakes, classes: Sequence[str]) -> Figure:
    """The most confident false positives and false negatives."""
    per_kind = mistakes.per_kind
    fig = new_figure(figsize=(1.6 * per_kind, 4))
    axes = fig.subplots(2, per_kind, squeeze=False)
    for c, (images, probs) in enumerate(zip(mistakes.images, mistakes.probs, strict=True)):
        for k in range(per_kind):
            ax = axes[c][k]
            ax.axis("off")
            if images is not None and k < len(images):
                ax.imshow(images[k].permute(1, 2, 0).squeeze().numpy(), cmap="gray")
                ax.set_title(f"p({classes[1]})={probs[k]:.3f}", fontsize=8)
        axes[c][0].text(
            -0.1,
            0.5,
            f"{classes[c]} called {classes[1 - c]}",
            transform=axes[c][0].transAxes,
            rotation=90,
            va="center",
            ha="right",
        )
    fig.suptitle(f"Most confident mistakes at threshold {mistakes.threshold:.4f}")
    return fig


def write_report(
    folder: Path,
    probs: torch.Tensor,
    labels: torch.Tensor,
    mistakes: ConfidentMistakes,
    thresholds: dict[str, float],
    classes: Sequence[str],
    loggers: Iterable[object] = (),
) -> dict:
    """Write metrics.json, report.md and PNG figures to `folder`; the same figures go to the loggers.

    `thresholds` maps a name (0.5, youden, f1) to a value; `classes` names label 0 and 1.
    """
    folder.mkdir(parents=True, exist_ok=True)
    loggers = list(loggers)
    p, y = probs.float(), labels.long()
    # every process's scores are here already: the metrics must not gather them again (rank zero alone writes)
    ece = float(BinaryCalibrationError(n_bins=15, sync_on_compute=False)(p, y))
    summary = {
        "n": len(y),
        "classes": list(classes),
        "auroc": float(binary_auroc(p, y)),
        "average_precision": float(BinaryAveragePrecision(sync_on_compute=False)(p, y)),
        "ece": ece,
        "at_threshold": {name: threshold_metrics(p, y, t, classes) for name, t in thresholds.items()},
    }
    figures: dict[str, Figure] = {}
    for name, metric in (
        ("confusion_matrix", BinaryConfusionMatrix(threshold=mistakes.threshold, sync_on_compute=False)),
        ("roc", BinaryROC(sync_on_compute=False)),
        ("precision_recall", BinaryPrecisionRecallCurve(sync_on_compute=False)),
    ):
        metric.update(p, y)
        figures[name] = metric_figure(
            metric, **({"labels": list(classes)} if name == "confusion_matrix" else {"score": True})
        )
    figures["reliability"] = reliability_figure(p.numpy(), y.numpy(), ece, classes[1])
    figures["mistakes"] = mistakes_figure(mistakes, classes)
    for name, fig in figures.items():
        fig.savefig(folder / f"{name}.png", dpi=120, bbox_inches="tight")
        log_figure(loggers, f"report/{name}", fig, 0)
    (folder / "metrics.json").write_text(json.dumps(summary, indent=2))
    (folder / "report.md").write_text(_markdown(summary, list(figures)))
    return summary


def _markdown(summary: dict, figures: list[str]) -> str:
    keys = ["acc", *(f"{m}_{c}" for c in summary["classes"] for m in ("precision", "recall", "f1"))]
    lines = [
        "# Evaluation report",
        "",
        f"{summary['n']} images; AUROC {summary['auroc']:.4f}, average precision {summary['average_precision']:.4f}, "
        f"expected calibration error {summary['ece']:.4f}.",
        "",
        "| threshold | value | " + " | ".join(k.replace("_", " ").replace("acc", "accuracy") for k in keys) + " |",
        "| --- | --- | " + " | ".join("---" for _ in keys) + " |",
    ]
    for name, m in summary["at_threshold"].items():
        lines.append(f"| {name} | {m['threshold']:.4f} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |")
    lines += ["", *[f"![{name}]({name}.png)" for name in figures], ""]
    return "\n".join(lines)
