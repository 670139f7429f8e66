"""What a sweep leaves behind: tables of its trials, Optuna's plots and one TensorBoard hparams view of them all.

The sweeper writes it into `<sweep dir>/report/` when a sweep ends; for any stored study (a resumed one, or one
that many workers share), `python -m fakedetect.search_report storage=URL study=NAME out=DIR`.
"""

from __future__ import annotations

import csv
import functools
import logging
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import optuna
from optuna.importance import PedAnovaImportanceEvaluator
from optuna.trial import FrozenTrial, TrialState
from optuna.visualization import matplotlib as plots
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from fakedetect.search.storage import retry_history

log = logging.getLogger(__name__)

TEST_COLUMNS = ("test/acc", "test/auroc", "test/f1")


def write_report(
    study: optuna.Study, out: Path, top_k: int = 10, tests: dict[int, dict[str, float]] | None = None
) -> Path:
    """trials.csv (every trial), best_trials.csv/.md (the top_k, or the Pareto front), plots/, tensorboard/.

    `tests` maps trial numbers to the test metrics measured once after the search; they join the best table.
    """
    out.mkdir(parents=True, exist_ok=True)
    names = objective_names(study)
    tests = tests or {}
    write_csv(out / "trials.csv", [trial_row(t, names) for t in study.trials])
    best = [trial_row(t, names, tests.get(t.number)) for t in ranked(study, top_k)]
    write_csv(out / "best_trials.csv", best)
    text = f"{summary(study)}\n\n{markdown_table([{k: v for k, v in r.items() if k != 'output_dir'} for r in best])}"
    (out / "best_trials.md").write_text(text + "\n")
    log.info("%s\nreport written to %s", text, out)
    save_plots(study, out / "plots", names)
    write_tensorboard(study, out / "tensorboard", names)
    return out


def objective_names(study: optuna.Study) -> list[str]:
    return study.metric_names or [f"value_{i}" for i in range(len(study.directions))]


def ranked(study: optuna.Study, top_k: int) -> list[FrozenTrial]:
    """The top_k complete trials, best first; for several objectives the whole Pareto front, by the first."""
    if len(study.directions) > 1:
        return sorted(
            study.best_trials,
            key=lambda t: t.values[0],
            reverse=study.directions[0] == optuna.study.StudyDirection.MAXIMIZE,
        )
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(complete, key=lambda t: t.values[0], reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)[
        :top_k
    ]


def trial_row(trial: FrozenTrial, names: Sequence[str], test: dict[str, float] | None = None) -> dict[str, object]:
    attrs = trial.user_attrs
    row: dict[str, object] = {"number": trial.number, "state": trial.state.name}
    row.update(zip(names, trial.values or [None] * len(names), strict=True))
    if test:
        row.update({k: test.get(k) for k in TEST_COLUMNS})
    row.update(
        {
            "n_params": attrs.get("n_params"),
            "train_time_s": attrs.get("train_time_s"),
            "duration_s": trial.duration.total_seconds() if trial.duration else None,
            "epochs": attrs.get("epochs"),
        }
    )
    row.update(trial.params)
    row["reason"] = attrs.get("fail_reason") or attrs.get("prune_reason") or stale_reason(trial)
    history = retry_history(trial)
    row["retry_of"] = history[-1] if history else None
    row["worker"] = attrs.get("worker")
    row["output_dir"] = attrs.get("output_dir")
    return row


def stale_reason(trial: FrozenTrial) -> str | None:
    """Why a trial is FAIL with no `fail_reason`: the sweep records one for every job it tells, so a heartbeat check
    failed it."""
    return "its worker stopped (no heartbeat for grace_period s)" if trial.state is TrialState.FAIL else None


def summary(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    counts = ", ".join(f"{s.name} {n}" for s in TrialState if (n := sum(t.state == s for t in trials)))
    seconds = sum(t.duration.total_seconds() for t in trials if t.duration)
    return f"Study `{study.study_name}`: {len(trials)} trials ({counts}), {seconds / 60:.1f} min of trials"


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(rows: list[dict[str, object]]) -> str:
    if not rows:
        return "(no complete trial)"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def save_plots(study: optuna.Study, out: Path, names: Sequence[str]) -> list[Path]:
    """Optuna's own matplotlib plots as PNGs; one that the study cannot support yet (too few trials) is skipped."""
    out.mkdir(parents=True, exist_ok=True)
    single = len(names) == 1
    makers: dict[str, Callable[[], Any]] = {}  # each returns Axes, or an array of them
    for i, name in enumerate(names):
        target = None if single else functools.partial(objective, index=i)
        suffix = "" if single else "_" + name.replace("/", "_")
        makers[f"history{suffix}"] = functools.partial(
            plots.plot_optimization_history, study, target=target, target_name=name
        )
        makers[f"importances{suffix}"] = functools.partial(
            plots.plot_param_importances,
            study,
            evaluator=PedAnovaImportanceEvaluator(),
            target=target,
            target_name=name,
        )
    if single:
        makers["intermediate_values"] = functools.partial(plots.plot_intermediate_values, study)
    else:
        makers["pareto_front"] = functools.partial(plots.plot_pareto_front, study, target_names=list(names))
    makers["timeline"] = functools.partial(plots.plot_timeline, study)
    saved = []
    for name, make in makers.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning on every plot
                axes = make()
        except Exception as e:  # a plot is a convenience: a finished sweep must not fail on one
            log.warning("no %s plot: %s", name, e)
            continue
        figure = np.ravel(axes)[0].figure
        figure.savefig(out / f"{name}.png", bbox_inches="tight", dpi=120)
        plt.close(figure)
        saved.append(out / f"{name}.png")
    return saved


def objective(trial: FrozenTrial, index: int) -> float:
    return trial.values[index]


def write_tensorboard(study: optuna.Study, out: Path, names: Sequence[str]) -> None:
    """One hparams session per finished trial, failed and pruned included: `tensorboard --logdir <out>`.

    No run carries an experiment summary, so TensorBoard builds the hparams table from every session (a
    conditional parameter gets its column even if the first trial lacks it).
    """
    shutil.rmtree(out, ignore_errors=True)
    for trial in study.get_trials(deepcopy=False):
        if not trial.state.is_finished():
            continue
        values = dict(zip(names, trial.values or [], strict=False))
        values.update({k: trial.user_attrs[k] for k in ("n_params", "train_time_s") if k in trial.user_attrs})
        values["duration_s"] = trial.duration.total_seconds() if trial.duration else 0.0
        metrics = {f"hp/{k.replace('/', '_')}": float(v) for k, v in values.items()}
        _, session_start, session_end = hparams({**trial.params, "state": trial.state.name}, metrics)
        with SummaryWriter(out / f"trial_{trial.number:04d}") as writer:
            writer.file_writer.add_summary(session_start)
            writer.file_writer.add_summary(session_end)
            for key, value in metrics.items():
                writer.add_scalar(key, value)
