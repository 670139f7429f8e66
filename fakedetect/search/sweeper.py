"""The sweep loop behind `hydra/sweeper=fakedetect_optuna`: Hydra's Optuna sweeper, extended where it falls short.

The stock sweeper gives a job no trial object and marks every exception FAIL, so it cannot prune, and a fixed
sampler seed replays the same first trials when a study is resumed. This subclass keeps its search-space parsing
and trial configuration, and owns the ask / launch / tell loop to:

- link each job to its trial (`+optuna_trial.{storage,study_name,trial_id}`, read by `OptunaTrialCallback`);
- tell a job that raised `optuna.TrialPruned` or diverged (`NonFiniteError`: a NaN or infinite loss, weight or
  metric) PRUNED, any other error FAIL, and record why (`prune_reason`, `fail_reason`) with the run's folder,
  parameter count and training time as trial user attributes;
- seed the sampler past the trials already in the study, so a resumed study or a parallel worker draws new points;
- let several workers share one study (`study_trials`): each asks for trials until the study holds that many, none
  of them running;
- search `conditional_params` only in the trials whose condition holds (e.g. a model's own parameters);
- keep each trial's Optuna heartbeat while it runs, and fail (then run again) the trials of any killed worker,
  on any host: Optuna does both in `optimize()` only, which this loop does not use;
- rewrite the report after every trial, so a killed sweep still leaves one; test the best trial (or the Pareto
  front) once, after the search.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, Trial, TrialState

from fakedetect.search.adapter import (
    SearchSpace,
    StockSweeper,
    heartbeat_thread,
    job_error,
    parse_overrides,
    suggest,
    tell,
    trial_id,
)
from fakedetect.search.report import write_report
from fakedetect.search.storage import Heartbeat, ask_lock, check_storage, describe, open_storage, retry_history
from fakedetect.utils.errors import NonFiniteError, exit_one_line
from fakedetect.utils.processes import run_child
from fakedetect.utils.signals import doing

log = logging.getLogger(__name__)

OPTUNA_TARGETS = ("optuna.samplers.*", "optuna.pruners.*", "hydra_plugins.hydra_optuna_sweeper.*")
# a trial's user attribute naming the sweep process that runs it, as host:pid (for the report, not for recovery)
WORKER = "worker"
# at most this many seconds between two looks at a full study whose other trials still run (the heartbeat
# interval, if shorter): the last worker ends this soon after the last trial
WAIT_S = 5
# what a job's metrics.json contributes to its trial's user attributes (trial attr: record key)
RECORD_ATTRS = {"n_params": "params", "train_time_s": "train_time_s", "epochs": "epochs", "ckpt_path": "ckpt_path"}


class SearchSweeper(StockSweeper):
    def __init__(
        self,
        sampler: DictConfig,
        pruner: DictConfig,
        conditional_params: Mapping[str, Mapping[str, str]],
        report: DictConfig,
        heartbeat: DictConfig,
        study_trials: int | None = None,
        **kwargs: Any,
    ) -> None:
        if str(sampler.get("_target_", "")).endswith("GridSampler"):
            raise ValueError("fakedetect_optuna does not run grids; use Hydra's basic sweeper (hydra/sweeper=basic)")
        super().__init__(sampler=None, **kwargs)
        self.sampler_cfg, self.pruner_cfg, self.report_cfg = sampler, pruner, report
        self.heartbeat = Heartbeat(heartbeat.interval, heartbeat.grace_period, heartbeat.max_retry)
        self.study_trials = study_trials
        self.store: BaseStorage = optuna.storages.InMemoryStorage()
        self.exhausted = False
        self.conditional = parse_conditional(conditional_params)
        user_extender = self.custom_search_space_extender

        def extend(cfg: DictConfig, trial: Trial) -> None:
            suggest_conditional(trial, self.conditional)
            if user_extender:
                user_extender(cfg, trial)

        self.custom_search_space_extender = extend

    def sweep(self, arguments: list[str]) -> None:
        """The search; its own config errors (not a trial's, which fail that trial) end it in one line."""
        try:
            self._sweep(arguments)
        except Exception as err:
            exit_one_line(err)
            raise

    def _sweep(self, arguments: list[str]) -> None:
        if self.storage:
            check_storage(self.storage, "hydra.sweeper.storage")
        space = self.search_space(arguments)
        study = self._open_study()
        failed = added = 0
        while added < self.n_trials:
            with self._asked(study, min(self.n_jobs, self.n_trials - added)) as trials:
                if not trials:
                    log.info("study '%s' holds its study_trials=%d trials", study.study_name, self.study_trials)
                    break
                added += len(trials)
                overrides = self.configure_trials(trials, space)
                with doing(f"search trial {', '.join(str(t.number) for t in trials)}", self._stopped_note(study)):
                    returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
                self.job_idx += len(returns)
            states = [self._tell(study, trial, ret) for trial, ret in zip(trials, returns, strict=True)]
            self._write_report(study)
            del returns  # a failed job's traceback holds its model: let it go before the next one
            if any(s is not TrialState.COMPLETE for s in states):
                release_memory()
            failed += states.count(TrialState.FAIL)
            if failed > self.max_failure_rate * self.n_trials:
                raise RuntimeError(
                    f"{failed} trials failed, more than max_failure_rate={self.max_failure_rate} "
                    f"of {self.n_trials}; their fail_reason is in study '{study.study_name}'"
                )
            if self.exhausted:
                log.info("the sampler has tried every combination of the search space")
                break
        self._finish(study)

    def _stopped_note(self, study: optuna.Study) -> str:
        """What becomes of a trial whose sweep is stopped: it stays RUNNING, its heartbeat no longer kept."""
        if not self.storage:
            return f"the in-memory study '{study.study_name}' is gone; the report holds the trials before it"
        return (
            f"it stays RUNNING in study '{study.study_name}' until its heartbeat is "
            f"{self.heartbeat.grace_period} s old; then the next sweep on the study fails it and runs it again"
        )

    def _open_study(self) -> optuna.Study:
        pruner = instantiate(self.pruner_cfg, _execution_whitelist_=OPTUNA_TARGETS)
        if self.storage:
            self.store = open_storage(self.storage, self.heartbeat)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.store,
            pruner=pruner,
            directions=self.directions(),
            load_if_exists=True,
        )
        # the job's callback rebuilds the pruner from here: the storage is its only link to the sweep
        study.set_user_attr("pruner", OmegaConf.to_container(self.pruner_cfg, resolve=True))
        metric = self.config.get("optimized_metric")
        if metric:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([metric] if isinstance(metric, str) else list(metric))
        log.info(
            "study '%s' in %s: %d trials so far, %d to add%s; sampler %s, pruner %s",
            study.study_name,
            describe(self.storage),
            len(study.get_trials(deepcopy=False)),
            self.n_trials,
            f" until it holds {self.study_trials}" if self.study_trials is not None else "",
            self.sampler_cfg.get("_target_"),
            type(study.pruner).__name__,
        )
        return study

    @contextlib.contextmanager
    def _asked(self, study: optuna.Study, n: int) -> Iterator[list[Trial]]:
        """Up to n trials (see `_ask`), their heartbeats recorded from the moment they are asked until the block
        ends; the trials are told after it, as `Study.optimize` tells them after its heartbeat thread stops."""
        with contextlib.ExitStack() as beats:
            yield self._ask(study, n, beats)

    def _ask(self, study: optuna.Study, n: int, beats: contextlib.ExitStack) -> list[Trial]:
        """Up to n trials, none past `study_trials`: first the queued ones, retries of trials whose worker died
        included, then new ones. Failing stale trials, counting and asking is atomic across workers.

        When the study is full but other workers' trials still run, wait for them: if one of those workers dies, its
        trial is failed once its heartbeat is `grace_period` old and queued again, and this worker runs it.
        """
        waiting_for: list[int] = []
        while True:
            with ask_lock(self.storage), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # Optuna warns that heartbeats are meant for optimize(); this loop records them itself
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                optuna.storages.fail_stale_trials(study)
                held = study.get_trials(deepcopy=False)
                k = n if self.study_trials is None else min(n, room(held, self.study_trials))
                running = [t.number for t in held if t.state is TrialState.RUNNING]
                if k > 0 or not running:
                    study.sampler = self._sampler(len(held))
                    trials = [study.ask() for _ in range(k)]
                    for trial in trials:
                        beats.enter_context(heartbeat_thread(self.store, trial))
                        trial.set_user_attr(WORKER, f"{socket.gethostname()}:{os.getpid()}")
                    return trials
            if running != waiting_for:
                log.info("study '%s' is full; waiting for trials %s of other workers", study.study_name, running)
                waiting_for = running
            time.sleep(min(self.heartbeat.interval, WAIT_S))

    def _sampler(self, held: int) -> optuna.samplers.BaseSampler:
        """The configured sampler; a fixed seed is offset by the `held` trials of the study, so a resumed study
        goes on and parallel workers draw different points."""
        seed = self.sampler_cfg.get("seed")
        kwargs = {} if seed is None else {"seed": seed + held}
        return instantiate(self.sampler_cfg, **kwargs, _execution_whitelist_=OPTUNA_TARGETS)

    def configure_trials(self, trials: list[Trial], space: SearchSpace) -> list[tuple[str, ...]]:
        overrides = super().configure_trials(trials, space)
        if not self.storage:  # an in-memory study cannot be reached from the job: no pruning
            return overrides
        return [
            (
                *o,
                f"+optuna_trial.storage={quote(self.storage)}",
                f"+optuna_trial.study_name={quote(t.study.study_name)}",
                f"+optuna_trial.trial_id={trial_id(t)}",
            )
            for o, t in zip(overrides, trials, strict=True)
        ]

    def _tell(self, study: optuna.Study, trial: Trial, ret: JobReturn) -> TrialState:
        try:
            return self._record(study, trial, ret)
        except optuna.exceptions.UpdateFinishedTrialError:
            # this worker's heartbeats missed the storage for grace_period s (a network outage): another worker
            # failed the trial and queued it again
            log.warning("trial %d was failed as stale while it ran here; its retry runs it again", trial.number)
            return TrialState.FAIL

    def _record(self, study: optuna.Study, trial: Trial, ret: JobReturn) -> TrialState:
        """Store the job's run folder, record and outcome on its trial, and tell the study."""
        assert ret.hydra_cfg is not None, "a launched job carries its Hydra config"
        output_dir = Path(ret.hydra_cfg.hydra.runtime.output_dir)
        trial.set_user_attr("output_dir", str(output_dir))
        if (output_dir / "metrics.json").exists():
            record = json.loads((output_dir / "metrics.json").read_text())
            for attr, key in RECORD_ATTRS.items():
                if record.get(key) is not None:
                    trial.set_user_attr(attr, record[key])
        state, values, reason = outcome(ret, len(study.directions))
        if reason:
            trial.set_user_attr("fail_reason" if state is TrialState.FAIL else "prune_reason", reason)
        if tell(study, trial, state, values):
            self.exhausted = True
        log.info("trial %d %s: %s", trial.number, state.name, values if values else reason)
        return state

    def _finish(self, study: optuna.Study) -> None:
        sweep_dir = Path(self.config.hydra.sweep.dir)
        best = best_trials(study)
        OmegaConf.save(
            {
                "name": "optuna",
                "study_name": study.study_name,
                "storage": describe(self.storage),
                "solutions": [{"number": t.number, "params": t.params, "values": t.values} for t in best],
            },
            sweep_dir / "optimization_results.yaml",
        )
        tests = {}
        overrides = [*self.report_cfg.test_overrides, *trust_overrides(self.config.get("trust"))]
        for trial in best if self.report_cfg.test_best else []:
            try:
                tests[trial.number] = evaluate_checkpoint(trial, sweep_dir / "test", overrides)
            except (KeyError, OSError, subprocess.CalledProcessError) as e:  # the search's results still stand
                log.error("could not test trial %d: %r", trial.number, e)
        self._write_report(study, tests)

    def _write_report(self, study: optuna.Study, tests: dict[int, dict[str, float]] | None = None) -> None:
        write_report(study, Path(self.config.hydra.sweep.dir) / "report", top_k=self.report_cfg.top_k, tests=tests)


def room(trials: Sequence[FrozenTrial], study_trials: int) -> int:
    """How many trials a worker may ask of a study holding `trials`: every queued (WAITING) one, and new ones until
    it holds `study_trials`, counting a trial that a heartbeat check failed and queued again once, as its retry."""
    retried = {number for t in trials for number in retry_history(t)}
    held = sum(t.number not in retried for t in trials)
    queued = sum(t.state is TrialState.WAITING for t in trials)
    return max(study_trials - held, 0) + queued


def best_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The best trial, or the Pareto front of a multi-objective study; none if no trial completed."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    return [study.best_trial] if len(study.directions) == 1 else study.best_trials


def outcome(ret: JobReturn, n_objectives: int) -> tuple[TrialState, list[float] | None, str | None]:
    """The trial state, objective values and reason a finished job amounts to."""
    if ret.status is not JobStatus.COMPLETED:
        error = job_error(ret)
        # a diverged trial tells the sampler its region is bad, as a pruned one does; a failed one would tell nothing
        if isinstance(error, (optuna.TrialPruned, NonFiniteError)):
            return TrialState.PRUNED, None, str(error) or "pruned"
        log.warning("trial failed with %r", error, exc_info=error)
        return TrialState.FAIL, None, f"{type(error).__name__}: {error}"
    value = ret.return_value
    values = list(value) if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else [value]
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        return TrialState.FAIL, None, f"the job returned {value!r}, not {n_objectives} number(s)"
    if len(values) != n_objectives:
        return TrialState.FAIL, None, f"the job returned {len(values)} values for {n_objectives} objectives"
    if not all(math.isfinite(v) for v in values):
        return TrialState.FAIL, None, f"the job returned a non-finite objective {values}"
    return TrialState.COMPLETE, values, None


def parse_conditional(spec: Mapping[str, Mapping[str, str]]) -> list[tuple[str, str, dict[str, BaseDistribution]]]:
    """`{"model=cnn": {"model.net.n_layers": "range(1, 4)"}}` as (param, value, distributions) triples."""
    parsed = []
    for condition, params in (spec or {}).items():
        name, sep, value = condition.partition("=")
        distributions, fixed, _ = parse_overrides([f"{k}={v}" for k, v in params.items()])
        if not sep or fixed:
            raise ValueError(
                f"conditional_params: want '<param>=<value>' keys holding sweeps only; got "
                f"'{condition}' with fixed values {sorted(fixed)}"
            )
        parsed.append((name.strip(), value.strip(), distributions))
    return parsed


def suggest_conditional(trial: Trial, conditional: list[tuple[str, str, dict[str, BaseDistribution]]]) -> None:
    for name, value, distributions in conditional:
        if name in trial.params and str(trial.params[name]) == value:
            for key, distribution in distributions.items():
                suggest(trial, key, distribution)


def evaluate_checkpoint(trial: optuna.trial.FrozenTrial, out: Path, overrides: list[str]) -> dict[str, float]:
    """Test a trial's best checkpoint once, with `python -m fakedetect.eval`; its test metrics."""
    run_dir = out / f"trial_{trial.number}"
    command = [
        sys.executable,
        "-m",
        "fakedetect.eval",
        f"ckpt_path={quote(trial.user_attrs['ckpt_path'])}",
        f"hydra.run.dir={quote(str(run_dir))}",
        *overrides,
    ]
    log.info("testing trial %d: %s", trial.number, " ".join(command))
    code = run_child(command)
    if code:
        raise subprocess.CalledProcessError(code, command)
    return json.loads((run_dir / "metrics.json").read_text())["metrics"]


def trust_overrides(trust: str | Sequence[str] | None) -> list[str]:
    """The search's own `trust` as eval's: a checkpoint never grants it, so eval of a trial's is told again."""
    if not trust:
        return []
    patterns = [trust] if isinstance(trust, str) else list(trust)
    return [f"trust=[{','.join(quote(str(p)) for p in patterns)}]"]


def quote(value: str) -> str:
    """A Hydra override value that stays one string whatever it holds (URLs, paths with '=' or spaces)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
