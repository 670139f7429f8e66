"""Results per source: does the detector catch each generator, and does it leave each real source alone?

Each generator is measured against ALL real images of the test set (accuracy and AUROC of its fakes together with
every real image; recall on its fakes), so the rows of different generators are comparable and a generator is never
judged on a handful of its own reals; each real-only source gets its specificity, and its accuracy and AUROC
against all fakes. A source holding both classes (GenImage's and ForenSynths' generator folders) gets the
generator's figures and the specificity of its own reals. The `all` row is the whole test set.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_accuracy, binary_auroc, binary_recall, binary_specificity

from fakedetect.metrics.scores import Scores
from fakedetect.metrics.thresholds import decide

log = logging.getLogger(__name__)

METRICS = ("acc", "auroc", "recall", "specificity")
FIELDS = ["test_set", "source", "kind", "n", "n_fake", "n_real", *METRICS]
ALL = "all"


def _rate(fn: Callable[[Tensor, Tensor], Tensor], preds: Tensor, labels: Tensor) -> float | None:
    return float(fn(preds, labels)) if len(labels) else None


def _auroc(probs: Tensor, labels: Tensor) -> float | None:
    """AUROC, or None when the pool holds one class only (it is undefined, not 0 or 0.5)."""
    return float(binary_auroc(probs, labels)) if len(labels.unique()) == 2 else None


def _row(probs: Tensor, labels: Tensor, preds: Tensor, own: Tensor, test_set: str, name: str) -> dict:
    real, fake = labels == 0, labels == 1
    own_fake, own_real = own & fake, own & real
    has_fake, has_real = bool(own_fake.any()), bool(own_real.any())
    row: dict = {
        "test_set": test_set,
        "source": name,
        "kind": "mixed" if has_fake and has_real else "fake" if has_fake else "real",
        "n": int(own.sum()),
        "n_fake": int(own_fake.sum()),
        "n_real": int(own_real.sum()),
        **dict.fromkeys(METRICS),
    }
    # a generator against every real image; a real-only source against every fake
    pool = (own_fake | real) if has_fake else (own_real | fake)
    if name == ALL:
        pool = own
    row["acc"] = _rate(binary_accuracy, preds[pool], labels[pool])
    row["auroc"] = _auroc(probs[pool], labels[pool])
    if has_fake:
        row["recall"] = _rate(binary_recall, preds[own_fake], labels[own_fake])
    if has_real:
        row["specificity"] = _rate(binary_specificity, preds[own_real], labels[own_real])
    return row


def source_rows(scores: Scores, names: Sequence[str], threshold: float, test_set: str = "test") -> list[dict]:
    """One row per source present in `scores` (in the order of `names`, which `scores.sources` indexes), then
    the `all` row; decisions at `threshold` (FAKE when P(FAKE) > threshold)."""
    probs, labels, sources = scores.probs.float(), scores.labels.long(), scores.sources.long()
    preds = decide(probs, threshold)
    rows = [
        _row(probs, labels, preds, sources == i, test_set, name)
        for i, name in enumerate(names)
        if bool((sources == i).any())
    ]
    unnamed = int(((sources < 0) | (sources >= len(names))).sum())
    if unnamed:
        log.warning("%d scored images carry no source among %s; they count in the 'all' row only", unnamed, list(names))
    everything = _row(probs, labels, preds, torch.ones_like(labels, dtype=torch.bool), test_set, ALL)
    return [*rows, {**everything, "kind": ALL}]


def flat_metrics(rows: Iterable[dict], prefix: str = "test/") -> dict[str, float]:
    """`<prefix>source/<name>/<metric>` scalars of the defined values (the `all` row is test/acc's own)."""
    return {
        f"{prefix}source/{r['source']}/{m}": r[m]
        for r in rows
        if r["source"] != ALL
        for m in METRICS
        if r[m] is not None
    }


def _cell(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def markdown(rows: Sequence[dict]) -> str:
    lines = [
        "| test set | source | kind | images | fake | real | accuracy | AUROC | recall | specificity |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['test_set']} | {r['source']} | {r['kind']} | {r['n']} | {r['n_fake']} | {r['n_real']} | "
        + " | ".join(_cell(r[m]) for m in METRICS)
        + " |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def write_per_source(folder: Path, rows: Sequence[dict]) -> None:
    """per_source.csv and per_source.md in `folder` (one row per test set and source)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "per_source.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    note = (
        "Each generator against all real images of its test set (accuracy, AUROC; recall on its own fakes); "
        "each real source: specificity, and accuracy and AUROC against all fakes.\n\n"
    )
    (folder / "per_source.md").write_text("# Results per source\n\n" + note + markdown(rows))
