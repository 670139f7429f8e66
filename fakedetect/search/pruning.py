"""The job's side of a search: report to its Optuna trial epoch by epoch, get pruned.

Hydra's Optuna sweeper gives the job no trial object. The fakedetect_optuna sweeper passes the trial's storage,
study name and id instead (`optuna_trial.*` in the job's config) and keeps the pruner's config on the study, so
the job re-opens the very trial the sweeper asked for and prunes with the sweep's pruner.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import optuna
from hydra.utils import instantiate

from fakedetect.search.adapter import reopen_trial
from fakedetect.search.storage import load_study


class OptunaTrialCallback(L.Callback):
    """Report `monitor` to the trial after each validation and raise optuna.TrialPruned when the pruner says so.

    A diverged trial (a NaN or infinite loss, weight or validation metric) has already stopped by then, in
    `fakedetect.callbacks.finite.StopOnNonFinite`, which the sweeper records as pruned. Optuna cannot prune
    multi-objective trials: they are not reported.
    """

    def __init__(
        self,
        storage: str,
        study_name: str,
        trial_id: int,
        monitor: str | Sequence[str],
    ) -> None:
        self.storage, self.study_name, self.trial_id = storage, study_name, trial_id
        self.monitor = monitor
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
