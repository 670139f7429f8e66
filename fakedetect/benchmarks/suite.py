"""`python -m fakedetect.bench suite=gpu stage=K|next|open [suite.deadline_s=S]`: the staged suite of every GPU
figure.

The figures are split into stages (conf/suite/gpu.yaml), each with the wall time it needs (`budget_s`), so that a
caller with limited time on a machine runs them a few at a time: with `suite.deadline_s`, seconds from the start
of the command, `stage=open` starts a stage only if its budget still fits, and every run is stopped so that the
stage ends by then (the runs: fakedetect/benchmarks/suite_runs.py); without one (null), every chosen stage runs to
its end. Each finished stage is appended to `<report>.json` (the record of which stages are done, on what machine,
when and at which commit) and `<report>.md` is redrawn from it, so a later command goes on with the next stage.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import subprocess
import time
from pathlib import Path
from typing import cast

from omegaconf import DictConfig, OmegaConf

from fakedetect import PACKAGE, config_dir
from fakedetect.benchmarks import throughput as bench
from fakedetect.benchmarks.suite_runs import RUNNERS, Deadline
from fakedetect.utils.errors import ConfigError
from fakedetect.utils.records import machine, plain

log = logging.getLogger(__name__)
SHOWN = ("test/acc", "test/acc_dedup", "test/auroc", "val/acc_best")


def load(path: Path) -> dict:
    if not path.exists():
        return {"stages": []}
    refused = f"{path}: not a suite record (JSON with a 'stages' list)"
    try:
        record = json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{refused}: {e}; move it away to start a new one") from None
    if not isinstance(record, dict) or not isinstance(record.get("stages"), list):
        raise ConfigError(f"{refused}; move it away to start a new one")
    return record


def done(record: dict, scale: str) -> set[str]:
    return {str(s["stage"]) for s in record["stages"] if s["scale"] == scale}


def chosen(stage: object, suite: DictConfig, record: dict) -> list[str]:
    """The stages to run: one number, the first open one (`next`) or every open one in order (`open`)."""
    names = [str(k) for k in suite.stages]
    open_ = [k for k in names if k not in done(record, suite.scale)]
    if str(stage) in names:
        return [str(stage)]
    if stage == "next":
        return open_[:1]
    if stage == "open":
        return open_
    raise ConfigError(f"stage={stage}: give a stage of suite {suite.name} ({', '.join(names)}), next or open")


def commit() -> str:
    """The commit of the checkout fakedetect runs from (+ '-dirty' with uncommitted changes); an installed package or
    a copy without .git says so."""
    checkout = config_dir().parent
    if checkout == PACKAGE:
        return "unknown (an installed package, not a git checkout)"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=checkout, capture_output=True, text=True
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git checkout)"


def run_suite(cfg: DictConfig) -> list[dict]:
    """Run the chosen stages while the deadline allows; record each one as it finishes."""
    suite = cfg.suite
    report = Path(suite.report)
    record = load(report.with_suffix(".json"))
    deadline = Deadline(math.inf if suite.deadline_s is None else suite.deadline_s)
    entries: list[dict] = []
    for number in chosen(cfg.get("stage"), suite, record):
        stage = suite.stages[number]
        if entries and deadline.left() < stage.budget_s:
            log.info("stage %s needs %s s, %.0f s left: stopping here", number, stage.budget_s, deadline.left())
            break
        entries.append(run_stage(cfg, number, stage, record, deadline))
        record["stages"].append(entries[-1])
        write(report, record)
    if not entries:
        log.info("suite %s: every stage is done at scale %s (see %s.md)", suite.name, suite.scale, report)
    return entries


def run_stage(cfg: DictConfig, number: str, stage: DictConfig, record: dict, deadline: Deadline) -> dict:
    suite = cfg.suite
    stamp = datetime.datetime.now(datetime.timezone.utc)
    start = time.perf_counter()
    entry: dict = {
        "stage": number,
        "title": stage.title,
        "scale": suite.scale,
        "machine": machine(),
        "date": stamp.isoformat(timespec="seconds"),
        "commit": commit(),
        "runs": {},
    }
    earlier = {name: r for s in record["stages"] if s["scale"] == suite.scale for name, r in s["runs"].items()}
    names = list(stage.runs)
    for i, name in enumerate(names):
        run = scaled(stage.runs[name], suite)
        if run.kind not in RUNNERS:
            raise ConfigError(f"suite.stages.{number}.runs.{name}.kind: '{run.kind}' is not one of {tuple(RUNNERS)}")
        folder = Path(suite.run_dir) / name / stamp.strftime("%Y%m%d-%H%M%S")
        share = deadline.left() / (len(names) - i)  # what is left, split among the runs still to come
        log.info("stage %s, %s (%s): %.0f s of %.0f s left", number, name, run.kind, share, deadline.left())
        t0 = time.perf_counter()
        result = RUNNERS[run.kind](cfg, run, folder, share, earlier)
        entry["runs"][name] = {"kind": run.kind, "wall_s": time.perf_counter() - t0, **result}
    entry["wall_s"] = time.perf_counter() - start
    return entry


def scaled(run: DictConfig, suite: DictConfig) -> DictConfig:
    """The run at the suite's scale: at `tiny`, its `tiny` patch merged into it (maps key by key, e.g. one row's
    steps), and the suite's and the patch's tiny overrides after its own."""
    values = plain(run)
    patch = values.pop("tiny", None) or {}
    if suite.scale == "tiny":
        common = list(suite.tiny) if values["kind"] not in ("throughput", "generate") else []
        overrides = [*values.get("overrides", []), *common, *patch.pop("overrides", [])]
        return cast(DictConfig, OmegaConf.merge(values, patch, {"overrides": overrides}))  # dicts merge to one
    if suite.scale != "full":
        raise ConfigError(f"suite.scale={suite.scale}: use full or tiny")
    return OmegaConf.create(values)


def write(report: Path, record: dict) -> None:
    report.parent.mkdir(parents=True, exist_ok=True)
    report.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str))
    report.with_suffix(".md").write_text(markdown(record))
    log.info("suite report: %s.md", report)


def markdown(record: dict) -> str:
    """The latest entry of every stage and scale, in stage order."""
    latest = {(s["stage"], s["scale"]): s for s in record["stages"]}
    lines = [
        "# fakedetect GPU suite",
        "",
        "Written by `python -m fakedetect.bench suite=gpu stage=...` (see docs/benchmarks.md, GPU suite); "
        "the JSON beside this file keeps every run of every stage.",
        "",
    ]
    for (number, scale), s in sorted(latest.items()):
        lines += [
            f"## Stage {number}: {s['title']}",
            "",
            f"Scale {scale}; {s['machine']}; {s['date']}; commit {s['commit']}; {s['wall_s']:.0f} s.",
            "",
        ]
        for name, r in s["runs"].items():
            lines += [f"### {name}", "", *run_markdown(r), ""]
    return "\n".join(lines)


def run_markdown(r: dict) -> list[str]:
    if r["kind"] == "throughput":
        return [bench.markdown(r, heading="####")]
    if r["kind"] == "time_to_accuracy":
        return [bench.accuracy_markdown(r)]
    if r["kind"] == "generate":
        return [
            f"{r['files']:,} JPEGs of {r['size']} x {r['size']} px ({r['folder_gb']:.2f} GB), half in each class "
            f"folder, written in {r['wall_s']:.0f} s."
        ]
    lines = [f"Error: {r['error']}", ""] if "error" in r else []
    if r["kind"] == "train":
        metrics = r.get("metrics", {})
        shown = {k: metrics[k] for k in SHOWN if k in metrics}
        cap = f" (capped at {r['capped_at_s']} s)" if "capped_at_s" in r else ""
        lines += [
            f"`{' '.join(r['train_overrides'])}`: {r.get('epochs', '?')} epochs, "
            f"{r.get('train_time_s', 0):.0f} s of fit{cap}, {r['wall_s']:.0f} s in all.",
            "",
            "| metric | value |",
            "| --- | --- |",
            *(f"| {k} | {v:.4f} |" for k, v in sorted(shown.items())),
        ]
    elif r["kind"] == "search":
        lines += [
            f"{r['trials']} trials by {r['workers']} workers sharing the device in {r['search_s']:.0f} s; "
            f"states {r['states']}; best value {r['best_value']} with {r['best_params']}."
        ]
    else:
        tables = r["tables"]
        lines += [
            f"- {name}: {t['checkpoint']}" + (f"; error: {t['error']}" if "error" in t else "")
            for name, t in tables.items()
        ]
        shown = {name: {x["condition"]: x for x in t["rows"]} for name, t in tables.items() if "rows" in t}
        conditions = list(dict.fromkeys(c for rows in shown.values() for c in rows))
        lines += [
            "",
            "Test accuracy (AUROC) under each degradation:",
            "",
            "| condition | " + " | ".join(shown) + " |",
            "| --- |" + " --- |" * len(shown),
            *(
                f"| {c} | "
                + " | ".join(
                    f"{rows[c]['acc']:.4f} ({rows[c]['auroc']:.4f})" if c in rows else "" for rows in shown.values()
                )
                + " |"
                for c in conditions
            ),
        ]
    return lines
