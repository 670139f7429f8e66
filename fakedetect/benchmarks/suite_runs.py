"""The runs of the GPU suite's stages (fakedetect/benchmarks/suite.py), one function per `kind`: each gets the
bench's config, the run's own config, its folder, the seconds it may take (`share`, math.inf with no deadline) and
the earlier runs of the record, and returns what the record keeps of it. Throughput and time to accuracy run
in-process through the bench's own functions (so does the generation of a high-resolution JPEG folder for the
streamed and cached rows); trainings, searches and evaluations run as the project's own commands in subprocesses,
each stopped when its share of the stage's deadline is spent.
"""

from __future__ import annotations

import json
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

from fakedetect.benchmarks import decode
from fakedetect.benchmarks import throughput as bench
from fakedetect.utils.processes import end, run_child

EVAL_S = 90  # seconds kept for a robustness evaluation after a training (ten conditions of the test split)


class Deadline:
    """Seconds left until `seconds` from now; math.inf: no deadline."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def timeout(seconds: float) -> float | None:
    """A subprocess timeout of `seconds` (at least 1); None (wait as long as it takes) when there is no deadline."""
    return None if math.isinf(seconds) else max(seconds, 1)


def generate(cfg: DictConfig, run: DictConfig, folder: Path, share: float, earlier: dict) -> dict:
    """`count` large JPEGs (decode_bench's generator) in `root`, alternately in the two class folders: a fresh,
    high-resolution folder for the loaders to stream and cache (new files: no cache of an earlier run matches)."""
    root = Path(run.root)
    for old in (p for c in cfg.data.classes for p in (root / c).glob("*.jpg")):
        old.unlink()
    made = decode.generate(str(root), run.count, run.size, run.workers or os.cpu_count() or 1)
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


def max_time(seconds: float) -> list[str]:
    """Lightning's trainer.max_time override: fit stops (and the test still runs) after `seconds`; none without a
    deadline."""
    if math.isinf(seconds):
        return []
    minutes, secs = divmod(max(int(seconds), 10), 60)
    hours, minutes = divmod(minutes, 60)
    return [f"++trainer.max_time={hours // 24:02d}:{hours % 24:02d}:{minutes:02d}:{secs:02d}"]


def time_to_accuracy(cfg: DictConfig, run: DictConfig, folder: Path, share: float, earlier: dict) -> dict:
    capped = cast(DictConfig, OmegaConf.merge(run, {"overrides": [*run.overrides, *max_time(share - 30)]}))
    result = bench.time_to_accuracy(capped, bench._data_overrides(cfg, limits=False))
    return {**result, "train_overrides": [f"experiment={run.experiment}", *run.overrides]}


def command(module: str, overrides: list[str], folder: Path, seconds: float) -> tuple[dict | None, str | None]:
    """`python -m fakedetect.<module>` with its output in folder/command.log; its metrics.json, or why none."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "command.log", "w") as out:
        try:
            code = run_child(
                [sys.executable, "-m", f"fakedetect.{module}", *overrides],
                timeout(seconds),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
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
    cap = max(seconds - 60, 10)
    metrics, error = command(
        "train",
        [
            *overrides,
            *bench._data_overrides(cfg, limits=False),
            *extra,
            "print_config=false",
            *max_time(cap),
            f"hydra.run.dir={folder}",
        ],
        folder,
        seconds,
    )
    if metrics is None:  # then error says why
        return {"error": error, "train_overrides": overrides}
    keep = ("epochs", "train_time_s", "ckpt_path", "images", "params", "metrics")
    capped = {"capped_at_s": int(cap)} if math.isfinite(cap) else {}
    return {**{k: metrics[k] for k in keep if k in metrics}, **capped, "train_overrides": overrides}


def train(cfg: DictConfig, run: DictConfig, folder: Path, share: float, earlier: dict) -> dict:
    """A training; with `robustness`, its checkpoint's robustness table too (stage 5 then reuses it), in the
    seconds kept for it (EVAL_S) or, with no deadline, as long as it takes."""
    evaluate = run.get("robustness")
    result = train_run(cfg, list(run.overrides), folder, share - (EVAL_S if evaluate else 0))
    if evaluate and "ckpt_path" in result:
        seconds = EVAL_S if math.isfinite(share) else share
        result["robustness"] = robustness_eval(cfg, result["ckpt_path"], folder / "robustness", seconds)
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
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            )
    error = None
    for i, worker in enumerate(workers):
        try:
            code = worker.wait(timeout=timeout(share - (time.perf_counter() - start)))
            if code:
                error = f"worker {i} exit {code}: {last_line(folder / f'worker{i}.log')}"
        except subprocess.TimeoutExpired:  # the rest are killed too, and their exit codes are not the cause
            error = f"stopped at the stage's deadline after {share:.0f} s"
            for w in workers:
                end(w)
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
