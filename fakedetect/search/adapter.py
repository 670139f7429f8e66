"""Every Optuna and Hydra internal the search relies on, under public names, in one module.

Hydra's Optuna sweeper keeps its search-space parsing and trial configuration in a private module, Optuna keeps a
trial's storage id, suggest-from-a-distribution and its heartbeats (the thread, and the interface a storage
implements to have them) private, and Hydra keeps a failed job's exception behind a property that re-raises it.
The rest of `fakedetect.search` reaches them only through here, and tests/test_search_adapter.py checks each one on
the installed versions, so an upgrade that moves one fails there, by name, instead of in the middle of a sweep.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Literal, cast

import optuna
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages._heartbeat import BaseHeartbeat, get_heartbeat_thread
from optuna.storages.journal import BaseJournalBackend
from optuna.trial import FrozenTrial, Trial, TrialState

SearchSpace = tuple[dict[str, BaseDistribution], dict[str, Any], list[str]]
Direction = Literal["minimize", "maximize"]


class StockSweeper(OptunaSweeperImpl):
    """Hydra's Optuna sweeper with its private steps under public names; `sweep` is left to the subclass."""

    # set by `setup`, before any sweep (Hydra's Sweeper types them optional)
    config: DictConfig
    launcher: Launcher

    def search_space(self, arguments: list[str]) -> SearchSpace:
        """The sweeper's `params` and the command line's overrides as (distributions, fixed values, fixed
        overrides); a value fixed on the command line is no longer searched."""
        self._process_searchspace_config()
        distributions, fixed, fixed_overrides = parse_overrides([*self._parse_sweeper_params_config(), *arguments])
        for name in fixed:
            distributions.pop(name, None)
        return distributions, fixed, fixed_overrides

    def directions(self) -> list[Direction]:
        return cast(list[Direction], self._get_directions())

    def configure_trials(self, trials: list[Trial], space: SearchSpace) -> list[tuple[str, ...]]:
        """Suggest each trial's parameters from `space` (as `search_space` returns it), run the custom search-space
        extender, and return each trial's job overrides."""
        return [tuple(o) for o in self._configure_trials(trials, *space)]


def parse_overrides(arguments: list[str]) -> SearchSpace:
    """Hydra sweep overrides (`x=range(1, 4)`, `y=choice(a, b)`, `z=1`) as (distributions, fixed, fixed overrides)."""
    return create_params_from_overrides(arguments)


def trial_id(trial: Trial | FrozenTrial) -> int:
    """The trial's id in its storage (not its number): what reopens it from another process."""
    return trial._trial_id


def reopen_trial(study: optuna.Study, trial_id: int) -> Trial:
    """A live trial for `trial_id` of `study`, asked for by another process (Optuna discourages this constructor)."""
    return Trial(study, trial_id)


def suggest(trial: Trial, name: str, distribution: BaseDistribution) -> Any:
    """Suggest `name` from a distribution object, as Hydra's sweeper does (Optuna's suggest_* take its fields)."""
    return trial._suggest(name, distribution)


def tell(study: optuna.Study, trial: Trial, state: TrialState, values: list[float] | None) -> bool:
    """Tell the study a trial's outcome; True when the sampler has run out of points.

    An exhausted BruteForceSampler calls `study.stop()`, which raises outside `optimize()` after the trial is told.
    """
    try:
        study.tell(trial, state=state, values=values)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise
        return True
    return False


def job_error(ret: JobReturn) -> Any:
    """What a failed job raised; `JobReturn.return_value` would re-raise (and print) it."""
    return ret._return_value


def heartbeat_thread(storage: BaseStorage, trial: Trial) -> AbstractContextManager[None]:
    """A context that records the trial's heartbeat every interval while it is open, as `Study.optimize` does; a
    no-op for a storage without heartbeats."""
    return cast(AbstractContextManager[None], get_heartbeat_thread(trial_id(trial), storage))


StaleTrialCallback = Callable[[optuna.Study, FrozenTrial], None]


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with the heartbeats Optuna implements for RDB storages only.

    A heartbeat is a trial system attribute (one journal line) holding the writer's clock; a RUNNING trial is stale
    once its last one, or its start if later (a retried trial inherits its original's), is `grace_period` old.
    """

    BEAT = "heartbeat"

    def __init__(
        self, backend: BaseJournalBackend, interval: int, grace_period: int, on_stale: StaleTrialCallback | None
    ) -> None:
        super().__init__(backend)
        self.interval, self.grace_period, self.on_stale = interval, grace_period, on_stale

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, self.BEAT, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            if self.BEAT not in trial.system_attrs:  # asked by a process without heartbeats: never judged
                continue
            started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
            if now - max(trial.system_attrs[self.BEAT], started) > self.grace_period:
                stale.append(trial_id(trial))
        return stale

    def get_heartbeat_interval(self) -> int:
        return self.interval

    def get_heartbeat_stale_trial_callback(self) -> StaleTrialCallback | None:
        return self.on_stale
