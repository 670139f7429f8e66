"""`python -m fakedetect.bench suite=gpu stage=K|next|open`: the staged suite of every GPU figure.

A GPU is lent for 30 minutes a session, 10 a command, so the figures are split into stages (conf/suite/gpu.yaml)
of at most 9 minutes each. Each finished stage is appended to `<report>.json` (the record of which stages are
done, on what machine, when and at which commit) and `<report>.md` is redrawn from it, so a later session goes on
with the next stage. Throughput and time to accuracy run in-process through the bench's own functions (so does
the generation of a high-resolution JPEG folder for the streamed and cached rows); trainings, searches and
evaluations run as the project's own commands in subprocesses, each stopped by the stage's deadline.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import cast

import optuna
from hydra import compose
from omegaconf import DictConfig, OmegaConf, open_dict

from fakedetect.benchmarks import throughput as bench
from fakedetect.data import decode_bench
from fakedetect.utils.errors import ConfigError
from fakedetect.utils.records import machine, plain

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
KINDS = ("generate", "throughput", "time_to_accuracy", "train", "search", "robustness")
SHOWN = ("test/acc", "test/acc_dedup", "test/auroc", "val/acc_best")
EVAL_S = 90  # seconds kept for a robustness evaluation after a training (ten conditions of the test split)


class Deadline:
    """Seconds left of the command's `deadline_s`, counted from its start."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


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
    """The checkout's commit (+ '-dirty' with uncommitted changes); a copy without .git says so."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git checkout)"


def run_suite(cfg: DictConfig) -> list[dict]:
    """Run the chosen stages while the deadline allows; record each one as it finishes."""
    suite = cfg.suite
    report = Path(suite.report)
    record = load(report.with_suffix(".json"))
    deadline = Deadline(suite.deadline_s)
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
        if run.kind not in KINDS:
            raise ConfigError(f"suite.stages.{number}.runs.{name}.kind: '{run.kind}' is not one of {KINDS}")
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


def generate(cfg: DictConfig, run: DictConfig, folder: Path, share: float, earlier: dict) -> dict:
    """`count` large JPEGs (decode_bench's generator) in `root`, alternately in the two class folders: a fresh,
    high-resolution folder for the loaders to stream and cache (new files: no cache of an earlier run matches)."""
    root = Path(run.root)
    for old in (p for c in cfg.data.classes for p in (root / c).glob("*.jpg")):
        old.unlink()
    made = decode_bench.generate(str(root), run.count, run.size, run.workers or os.cpu_count() or 1)
    for i, path in enumerate(sorted(root.glob("*.jpg"))):
        (root / cfg.data.classes[i % 2]).mkdir(exist_ok=True)
        path.rename(root / cfg.data.classes[i % 2] / path.name)
    return {**made, "root": str(root)}


def throughput(cfg: DictConfig, run: DictConfig, folder: Path, share: float, earlier: dict) -> dict:
    """The bench's throughput rows; the run's `per_model` adds rows (or settings of rows) to the bench's own."""
    bench_cfg = compose(
        "bench", overrides=[*bench._data_overrides(cfg), *run.overrides, "time_to_accuracy.enabled=false"]
    )
    with open_dict(bench_cfg):
        bench_cfg.per_model = OmegaConf.merge(bench_cfg.per_model, run.get("per_model") or {})
    return bench.bench(bench_cfg)


def max_time(seconds: float) -> str:
    """Lightning's trainer.max_time override: fit stops (and the test still runs) after `seconds`."""
    minutes, secs = divmod(max(int(seconds), 10), 60)
    hours, minutes = divmod(minutes, 60)
    return f"++trainer.max_time={hours // 24:02d}:{hours % 24:02d}:{minutes:02d}:{secs:02d}"


def time_to_accuracy(cfg: DictConfig, run: DictConfig, folder: Path, share: float, earlier: dict) -> dict:
    capped = cast(DictConfig, OmegaConf.merge(run, {"overrides": [*run.overrides, max_time(share - 30)]}))
    result = bench.time_to_accuracy(capped, bench._data_overrides(cfg, limits=False))
    return {**result, "train_overrides": [f"experiment={run.experiment}", *run.overrides]}


def command(module: str, overrides: list[str], folder: Path, seconds: float) -> tuple[dict | None, str | None]:
    """`python -m fakedetect.<module>` with its output in folder/command.log; its metrics.json, or why none."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "command.log", "w") as out:
        try:
            code = subprocess.run(
                [sys.executable, "-m", f"fakedetect.{module}", *overrides],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=max(seconds, 1),
            ).returncode
        except subprocess.TimeoutExpired:
            return None, f"stopped at the stage's deadline after {seconds:.0f} s"
    if code:
        return None, f"exit {code}: {last_line(folder / 'command.log')}"
    return json.loads((folder / "metrics.json").read_text()), None


def last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no output"


def train_run(cfg: DictConfig, overrides: list[str], folder: Path, seconds: float, *extra: str) -> dict:
    """One training, its fit capped with trainer.max_time a minute before `seconds` so its test still runs."""
    cap = max(int(seconds) - 60, 10)
    metrics, error = command(
        "train",
        [
            *overrides,
            *bench._data_overrides(cfg, limits=False),
            *extra,
            "print_config=false",
            max_time(cap),
            f"hydra.run.dir={folder}",
        ],
        folder,
        seconds,
    )
    if metrics is None:  # then error says why
        return {"error": error, "train_overrides": overrides}
    keep = ("epochs", "train_time_s", "ckpt_path", "images", "params", "metrics")
    return {**{k: metrics[k] for k in keep if k in metrics}, "capped_at_s": cap, "train_overrides": overrides}


def train(cfg: DictConfig, run: DictConfig, folder: Path, share: float, earlier: dict) -> dict:
    """A training; with `robustness`, its checkpoint's robustness table too (stage 5 then reuses it)."""
    evaluate = run.get("robustness")
    result = train_run(cfg, list(run.overrides), folder, share - (EVAL_S if evaluate else 0))
    if evaluate and "ckpt_path" in result:
        result["robustness"] = robustness_eval(cfg, result["ckpt_path"], folder / "robustness", EVAL_S)
    return result


def search(cfg: DictConfig, run: DictConfig, folder: Path, share: float, earlier: dict) -> dict:
    """`workers` processes of one Optuna study until it holds `trials`, all sharing the device."""
    folder.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{folder / 'study.db'}"
    overrides = [
        "-m",
        *run.overrides,
        *bench._data_overrides(cfg, limits=False),
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.study_name={run.study}",
        f"hydra.sweeper.study_trials={run.trials}",
        f"hydra.sweeper.n_trials={run.trials}",
        "hydra.sweeper.report.test_best=false",
        "print_config=false",
    ]
    start = time.perf_counter()
    workers = []
    for i in range(run.workers):
        with open(folder / f"worker{i}.log", "w") as log_file:  # the child keeps its own handle
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "fakedetect.train", *overrides, f"hydra.sweep.dir={folder / f'worker{i}'}"],
                    cwd=ROOT,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            )
    error = None
    for i, worker in enumerate(workers):
        try:
            code = worker.wait(timeout=max(share - (time.perf_counter() - start), 1))
            if code:
                error = f"worker {i} exit {code}: {last_line(folder / f'worker{i}.log')}"
        except subprocess.TimeoutExpired:  # the rest are killed too, and their exit codes are not the cause
            error = f"stopped at the stage's deadline after {share:.0f} s"
            for w in workers:
                w.kill()
                w.wait()
            break
    wall = time.perf_counter() - start
    try:
        trials = optuna.load_study(study_name=run.study, storage=storage).get_trials(deepcopy=False)
    except KeyError:  # no worker got as far as creating the study
        trials = []
    states = Counter(t.state.name for t in trials)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: -math.inf if t.value is None else t.value) if complete else None
    return {
        "workers": run.workers,
        "trials": run.trials,
        "search_s": wall,
        "states": dict(states),
        "best_value": best.value if best else None,
        "best_params": best.params if best else None,
        "storage": storage,
        **({"error": error} if error else {}),
    }


def robustness_eval(cfg: DictConfig, ckpt: str, folder: Path, seconds: float) -> dict:
    """`python -m fakedetect.eval robustness.enabled=true` of a checkpoint: its table's rows, or why none."""
    tiny = cfg.suite.tiny_eval if cfg.suite.scale == "tiny" else []
    metrics, error = command(
        "eval",
        [
            f"ckpt_path={ckpt}",
            f"data.root={cfg.data.root}",
            "robustness.enabled=true",
            "report=false",
            *tiny,
            f"hydra.run.dir={folder}",
        ],
        folder,
        seconds,
    )
    return {"rows": metrics["robustness"]} if metrics else {"error": error}


def robustness(cfg: DictConfig, run: DictConfig, folder: Path, share: float, earlier: dict) -> dict:
    """The robustness table of each model in `of`, side by side: the one its earlier run made, else one of its
    checkpoint if still on disk, else of a new training of it (its overrides in `of`, then the run's), capped."""
    tables: dict = {}
    deadline = Deadline(share)
    for i, name in enumerate(run.of):
        seconds = deadline.left() / (len(run.of) - i)
        before = earlier.get(name, {})
        if "rows" in before.get("robustness", {}):
            tables[name] = {"checkpoint": "earlier run", **before["robustness"]}
            continue
        ckpt, source = before.get("ckpt_path"), {"checkpoint": "earlier run"}
        if not ckpt or not Path(ckpt).exists():
            trained = train_run(cfg, [*run.of[name], *run.overrides], folder / name, seconds - EVAL_S, "test=false")
            ckpt = trained.get("ckpt_path")
            source = {
                "checkpoint": "trained again",
                **{k: trained[k] for k in ("epochs", "train_time_s", "error") if k in trained},
            }
        tables[name] = {
            **source,
            **(
                robustness_eval(cfg, ckpt, folder / name / "robustness", max(deadline.left() / (len(run.of) - i), 1))
                if ckpt
                else {}
            ),
        }
    return {"tables": tables}


RUNNERS = {
    "generate": generate,
    "throughput": throughput,
    "time_to_accuracy": time_to_accuracy,
    "train": train,
    "search": search,
    "robustness": robustness,
}


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
        "Written by `python -m fakedetect.bench suite=gpu stage=...` (see README, Speed, benchmark and scale); "
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
        lines += [
            f"`{' '.join(r['train_overrides'])}`: {r.get('epochs', '?')} epochs, "
            f"{r.get('train_time_s', 0):.0f} s of fit (capped at {r.get('capped_at_s', '?')} s), "
            f"{r['wall_s']:.0f} s in all.",
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
