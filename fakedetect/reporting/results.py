"""The README's results table, rebuilt from the runs' own files (the `python -m fakedetect.results` command).

Every `metrics.json` of a training run of an `experiment=` config under the outputs folder gives a row (the
newest run of each experiment and machine); the write-ups' figures come from the experiment files'
`reference` field. Nothing is typed by hand. A run on the packaged sample (`data=cifake_sample`) is never shown as
a CIFAKE result: its row says "sample". `test acc (dedup)` is the accuracy on the test images without a
byte-identical copy in the run's train or val images (`test/acc_dedup`); runs older than that metric show n/a.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fakedetect import config_dir
from fakedetect.utils.records import training_records

START, END = "<!-- results:start -->", "<!-- results:end -->"
SAMPLE = "cifake_sample"


def collect(outputs: Path, min_train: int = 0) -> list[dict]:
    """The newest training record per (experiment, machine, training-set size) under `outputs`, leaving out
    smoke runs on fewer than `min_train` training images."""
    runs: dict[tuple, dict] = {}
    for path, record in training_records(outputs):
        if not record.get("experiment") or "test/acc" not in record.get("metrics", {}):
            continue
        config = path.parent / ".hydra" / "config.yaml"
        data = OmegaConf.load(config).data if config.exists() else {}
        record["train_images"] = record.get("images", {}).get("train") or (
            "full" if not data.get("train_limit") else data.get("train_limit")
        )
        if isinstance(record["train_images"], int) and record["train_images"] < min_train:
            continue
        record["resolution"] = data.get("resolution")
        record["run"] = str(path.parent)
        key = (record["experiment"], record.get("data") == SAMPLE, record["machine"], str(record["train_images"]))
        runs[key] = record
    return sorted(runs.values(), key=lambda r: r["experiment"])


def reference(experiment: str) -> str:
    path = config_dir() / "experiment" / f"{experiment}.yaml"
    cfg = OmegaConf.load(path) if path.exists() else None
    return str(cfg.get("reference") or "") if isinstance(cfg, DictConfig) else ""


def table(records: list[dict]) -> str:
    lines = [
        "| experiment | test acc | test acc (dedup) | test AUROC | params | epochs | training time | train images "
        "| machine | write-up |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        m = r["metrics"]
        sample = " (sample)" if r.get("data") == SAMPLE else ""
        dedup = f"{100 * m['test/acc_dedup']:.2f}%" if "test/acc_dedup" in m else "n/a"
        lines.append(
            f"| `{r['experiment']}`{sample} | {100 * m['test/acc']:.2f}% | {dedup} | "
            f"{m.get('test/auroc', float('nan')):.4f} | "
            f"{r['params']:,} | {r.get('epochs', '')} | {r.get('train_time_s', 0) / 60:.1f} min | "
            f"{r['train_images']}{sample} | {r['machine']} | {reference(r['experiment'])} |"
        )
    return "\n".join(lines)


def update_readme(readme: Path, text: str) -> None:
    content = readme.read_text()
    if START not in content or END not in content:
        raise ValueError(f"{readme} has no {START} ... {END} markers for the results table")
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")
