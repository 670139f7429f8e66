"""The job's side of a search: report to its Optuna trial epoch by epoch, get pruned, stop when it diverges.

Hydra's Optuna sweeper gives the job no trial object. The fakedetect_optuna sweeper passes the trial's storage,
study name and id instead (`optuna_trial.*` in the job's config) and keeps the pruner's config on the study, so
the job re-opens the very trial the sweeper asked for and prunes with the sweep's pruner.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning as L
import optuna
from hydra.utils import instantiate

from fakedetect.search.adapter import reopen_trial
from fakedetect.search.storage import load_study


class OptunaTrialCallback(L.Callback):
    """Report `monitor` to the trial after each validation and raise optuna.TrialPruned when the pruner says so.

    Any of `finite` turning NaN or infinite also ends the trial (as pruned, with the reason) rather than train on
    a diverged net. Multi-objective trials only get that check: Optuna cannot prune them.
    """

    def __init__(
        self,
        storage: str,
        study_name: str,
        trial_id: int,
        monitor: str | Sequence[str],
        finite: Sequence[str] = ("train/loss", "val/loss"),
    ) -> None:
        self.storage, self.study_name, self.trial_id = storage, study_name, trial_id
        self.monitor, self.finite = monitor, tuple(finite)
        self.trial: optuna.Trial | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # opened here, not in __init__, so a spawned DDP process opens its own storage connection
        if self.trial is None:
            # the sampler is not used here: the sweeper has already sampled this trial's parameters
            study = load_study(self.storage, self.study_name, sampler=optuna.samplers.RandomSampler())
            spec = study.user_attrs.get("pruner") or {"_target_": "optuna.pruners.NopPruner"}
            study.pruner = instantiate(spec, _execution_whitelist_="optuna.pruners.*")
            self.trial = reopen_trial(study, self.trial_id)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        assert self.trial is not None, "setup() opens the trial"
        epoch = trainer.current_epoch
        for name in self.finite:
            metric = trainer.callback_metrics.get(name)
            if metric is not None and not math.isfinite(float(metric)):
                raise optuna.TrialPruned(f"diverged: {name} is {float(metric)} at epoch {epoch}")
        if len(self.trial.study.directions) > 1:
            return
        monitor = self.monitor if isinstance(self.monitor, str) else self.monitor[0]
        value = float(trainer.callback_metrics[monitor])
        prune = False
        if trainer.is_global_zero:
            self.trial.report(value, epoch)
            prune = self.trial.should_prune()
        if trainer.strategy.broadcast(prune):
            raise optuna.TrialPruned(
                f"{monitor}={value:.4f} at epoch {epoch}, pruned by {type(self.trial.study.pruner).__name__}"
            )
