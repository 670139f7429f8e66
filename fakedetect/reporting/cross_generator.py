"""GenImage's table, from the runs' own files (the `python -m fakedetect.cross_generator runs=DIR` command).

Every training run under DIR (one multirun of `experiment=cross_generator` with a `data.train_sources` sweep) gives
a row: the sources it trained on (its `.hydra/config.yaml`), and per test source the metric its `metrics.json`
recorded (`test/source/<name>/<metric>`: accuracy of that generator's fakes with all real images, by default).
Writes `cross_generator.md` and a heat map `cross_generator.png` (rows: trained on, columns: tested on) into
`out` (default DIR). The diagonal is the seen generator; the rest is how the detector generalizes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from fakedetect.reporting.figures import new_figure
from fakedetect.reporting.per_source import METRICS
from fakedetect.utils.errors import ConfigError
from fakedetect.utils.records import training_records

GENERATOR_KINDS = ("fake", "mixed")
# specificity is a real-image metric: a generator's column has no real images
TABLE_METRICS = tuple(m for m in METRICS if m != "specificity")


def collect(runs: Path) -> dict[str, dict[str, dict]]:
    """Trained-on label -> {tested source -> its per-source row}; the newest run of each label wins."""
    table: dict[str, dict[str, dict]] = {}
    for path, record in training_records(runs):
        config = path.parent / ".hydra" / "config.yaml"
        if "per_source" not in record or not config.exists():
            continue
        sources = OmegaConf.load(config).data.get("train_sources")
        label = "+".join(map(str, sources)) if sources else "all"
        table[label] = {row["source"]: row for row in record["per_source"] if row["kind"] in GENERATOR_KINDS}
    return table


def matrix(table: dict[str, dict[str, dict]], metric: str) -> tuple[list[str], list[str], np.ndarray]:
    """(row labels, column sources, values with NaN where a run has no such source), rows and columns sorted."""
    rows = sorted(table)
    columns = sorted({source for tested in table.values() for source in tested})
    values = np.full((len(rows), len(columns)), np.nan)
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            value = table[row].get(column, {}).get(metric)
            if value is not None:
                values[i, j] = value
    return rows, columns, values


def markdown(rows: list[str], columns: list[str], values: np.ndarray, metric: str) -> str:
    def cell(v: float) -> str:
        return "n/a" if math.isnan(v) else f"{100 * v:.1f}" if metric != "auroc" else f"{v:.3f}"

    lines = [
        f"{metric} of each tested generator (columns) for each training set (rows); mean over columns.",
        "",
        "| trained on | " + " | ".join(columns) + " | mean |",
        "| --- |" + " --- |" * (len(columns) + 1),
    ]
    for label, line in zip(rows, values, strict=True):
        mean = float(np.nanmean(line)) if not np.isnan(line).all() else math.nan
        lines.append(f"| {label} | " + " | ".join(cell(v) for v in line) + f" | {cell(mean)} |")
    return "\n".join(lines) + "\n"


def heat_map(rows: list[str], columns: list[str], values: np.ndarray, metric: str, path: Path) -> None:
    fig = new_figure(figsize=(1.5 + 0.9 * len(columns), 1.2 + 0.6 * len(rows)))
    ax = fig.subplots()
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set(xlabel="tested on", ylabel="trained on", title=f"Cross-generator {metric}")
    for (i, j), v in np.ndenumerate(values):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
    fig.colorbar(image, ax=ax)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def write_table(runs: Path, out: Path, metric: str = "acc") -> str:
    """Write cross_generator.md and .png into `out`; returns the Markdown. No run found is a ConfigError."""
    if metric not in TABLE_METRICS:
        raise ConfigError(f"metric={metric} is not a per-source metric; use one of {', '.join(TABLE_METRICS)}")
    if not runs.is_dir():
        raise ConfigError(f"runs={runs}: no such folder; give the multirun folder of the sweep")
    table = collect(runs)
    if not table:
        raise ConfigError(
            f"no training run with per-source results under {runs}; run "
            "python -m fakedetect.train -m experiment=cross_generator data.root=... "
            "data.train_sources='[a]','[b]' first, and give its multirun folder"
        )
    rows, columns, values = matrix(table, metric)
    text = markdown(rows, columns, values, metric)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cross_generator.md").write_text(f"# Cross-generator {metric}\n\n{text}")
    heat_map(rows, columns, values, metric, out / "cross_generator.png")
    return text
