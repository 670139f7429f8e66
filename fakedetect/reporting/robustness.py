"""Accuracy and AUROC of a detector on the test split under real-world degradations (Wang et al. 2020)."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import binary_accuracy, binary_auroc

from fakedetect.data.degrade import DEGRADATIONS, STRENGTHS, degrade
from fakedetect.metrics.thresholds import decide
from fakedetect.reporting.figures import log_figure, new_figure
from fakedetect.utils.errors import ConfigError


def parse_condition(condition: str) -> tuple[str, float | None]:
    """'jpeg:75' -> ('jpeg', 75.0); 'clean' -> ('clean', None); anything else is a one-line config error."""
    if condition == "clean":
        return "clean", None
    kind, _, strength = condition.partition(":")
    try:
        value = float(strength)
    except ValueError:
        value = None
    if kind not in DEGRADATIONS or value is None:
        raise ConfigError(
            f"robustness.conditions: '{condition}' is not clean or kind:strength with a kind of "
            f"{sorted(DEGRADATIONS)} and a number, e.g. jpeg:75 or blur:1.0"
        )
    ok, what = STRENGTHS[kind]
    if not ok(value):  # NaN fails every range too
        raise ConfigError(f"robustness.conditions: '{condition}': the strength of {kind} is {what}")
    return kind, value


def robustness_table(
    score: Callable[[Callable[[torch.Tensor], torch.Tensor] | None], tuple[torch.Tensor, ...]],
    threshold: float,
    conditions: Iterable[str],
) -> list[dict]:
    """One row per condition: accuracy at `threshold` and AUROC of `score(transform)` -> (P(FAKE), labels, ...),
    where `transform` degrades each uint8 NCHW test batch (None for the clean one). The default conditions are
    eval's `robustness.conditions` (conf/eval.yaml)."""
    parsed = {condition: parse_condition(condition) for condition in conditions}  # all checked before scoring
    rows = []
    for condition, (kind, strength) in parsed.items():
        probs, labels = score(None if strength is None else partial(degrade, kind=kind, strength=strength))[:2]
        rows.append(
            {
                "condition": condition,
                "acc": float(binary_accuracy(decide(probs, threshold), labels)),
                "auroc": float(binary_auroc(probs, labels)),
            }
        )
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
    fig = new_figure(figsize=(1 + 0.8 * len(rows), 4))
    ax = fig.subplots()
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["acc"] for r in rows], 0.4, label="accuracy")
    ax.bar(x + 0.2, [r["auroc"] for r in rows], 0.4, label="AUROC")
    ax.set_xticks(x, [r["condition"] for r in rows], rotation=45, ha="right")
    ax.set(ylim=(0.4, 1.0), title="Robustness to degradations")
    ax.legend()
    fig.savefig(folder / "robustness.png", dpi=120, bbox_inches="tight")
    log_figure(loggers, "report/robustness", fig, 0)
