"""`hydra/sweeper=fakedetect_optuna`: Hydra's Optuna sweeper plus pruning inside the run, failure reasons and reports.

Only the config schema and a thin plugin class live here, because Hydra imports every `hydra_plugins` module at
start-up: the sweeper itself (and optuna) is imported from `fakedetect.search.sweeper` only when a sweep runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf, SamplerConfig
from omegaconf import MISSING, DictConfig


@dataclass
class ReportConf:
    # rows of the best-trials table (single objective; a multi-objective report lists the whole Pareto front)
    top_k: int = 10
    # after the sweep, test the best trial's (or every Pareto trial's) best checkpoint once with fakedetect.eval
    test_best: bool = True
    # extra `python -m fakedetect.eval` overrides for that test, e.g. [data.test_limit=20000]
    test_overrides: list[str] = field(default_factory=list)


@dataclass
class HeartbeatConf:
    """Optuna's heartbeats, which recover the trial of a worker killed on any host; the defaults suit trials of a
    few minutes (a shorter grace_period fails a trial whose worker merely lost the database for that long)."""

    # seconds between two heartbeats of a running trial
    interval: int = 30
    # a RUNNING trial whose last heartbeat is this many seconds old is failed by the next worker asking for a trial
    grace_period: int = 120
    # how many times one trial's parameters are queued again after such a failure (null: no limit)
    max_retry: int | None = 1


@dataclass
class BruteForceSamplerConfig(SamplerConfig):
    """Every combination of a discrete space once, in seeded random order (hydra/sweeper/sampler=brute_force)."""

    _target_: str = "optuna.samplers.BruteForceSampler"
    seed: int | None = None
    avoid_premature_stop: bool = False


@dataclass
class FakedetectOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.fakedetect_sweeper.fakedetect_sweeper.FakedetectOptunaSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "nop"}])
    # an optuna.pruners config (hydra/sweeper/pruner=median|hyperband|threshold|nop); trials are pruned epoch by
    # epoch inside the Lightning run, which reaches the trial through the study's storage
    pruner: Any = MISSING
    # one SQLite file per study under outputs/ by default; `journal:<path>` for Optuna's journal file; a
    # PostgreSQL URL (`postgresql+psycopg://user:pw@host/db`) for workers on many machines
    storage: Any = "sqlite:///${paths.log_dir}/optuna/${.study_name}.db"
    # parallel workers: start the same sweep in several processes on one storage, each with this set; a worker
    # stops once the study holds this many trials (all workers' and earlier sweeps' together) and none of them
    # still runs
    study_trials: int | None = None
    study_name: str | None = "fakedetect"
    # jobs launched (and asked of the sampler) at once; 1 lets TPE learn from every finished trial
    n_jobs: int = 1
    # the sweep stops when more than this fraction of its n_trials have failed (pruned trials are not failures)
    max_failure_rate: float = 0.5
    # {"<param>=<value>": {param: sweep}}: searched only in trials whose <param> (e.g. a config group such as
    # `model`) took <value>; conditions are checked in order, so a later one may test an earlier one's param
    conditional_params: dict[str, dict[str, str]] = field(default_factory=dict)
    report: ReportConf = field(default_factory=ReportConf)
    heartbeat: HeartbeatConf = field(default_factory=HeartbeatConf)


class FakedetectOptunaSweeper(Sweeper):
    def __init__(self, **kwargs: Any) -> None:
        from fakedetect.search.sweeper import SearchSweeper

        self.sweeper = SearchSweeper(**kwargs)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)


PRUNERS = {
    "nop": {"_target_": "optuna.pruners.NopPruner"},
    "median": {
        "_target_": "optuna.pruners.MedianPruner",
        "n_startup_trials": 5,
        "n_warmup_steps": 0,
        "interval_steps": 1,
    },
    "hyperband": {
        "_target_": "optuna.pruners.HyperbandPruner",
        "min_resource": 1,
        "max_resource": "auto",
        "reduction_factor": 3,
    },
    # prunes whatever falls outside [lower, upper]; give at least one
    "threshold": {"_target_": "optuna.pruners.ThresholdPruner", "lower": None, "upper": None, "n_warmup_steps": 0},
}

cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="fakedetect_optuna", node=FakedetectOptunaSweeperConf, provider="fakedetect")
cs.store(group="hydra/sweeper/sampler", name="brute_force", node=BruteForceSamplerConfig, provider="fakedetect")
for name, node in PRUNERS.items():
    cs.store(group="hydra/sweeper/pruner", name=name, node=node, provider="fakedetect")
