"""The Optuna / Hydra internals behind fakedetect/search/adapter.py exist, with the signatures it calls them by.

Each failure names the internal and the installed versions, so an upgrade that moves one is found here, not in the
middle of a sweep. The last test keeps the list honest: every private name the adapter touches is checked here,
and no other module of the search touches one.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from importlib.metadata import version
from pathlib import Path
from unittest import mock

import optuna
import pytest
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, Trial, TrialState

from fakedetect.search import adapter
from hydra_plugins.fakedetect_sweeper.fakedetect_sweeper import FakedetectOptunaSweeperConf
from tests.conftest import ROOT

VERSIONS = ", ".join(f"{d} {version(d)}" for d in ("optuna", "hydra-core", "hydra-optuna-sweeper"))
STOCK = adapter.OptunaSweeperImpl
# the private names this file checks; the adapter may touch no other
CHECKED = {
    "_process_searchspace_config",
    "_parse_sweeper_params_config",
    "_get_directions",
    "_configure_trials",
    "_trial_id",
    "_suggest",
    "_return_value",
}
# the fakedetect_optuna config's own keys, which SearchSweeper takes before passing the rest to the stock sweeper
OURS = {"_target_", "defaults", "pruner", "study_trials", "conditional_params", "report", "heartbeat"}


def require(owner: object, name: str, params: list[str] | None = None) -> None:
    """`owner.name` exists and, if `params` are given, takes exactly those parameters."""
    where = f"{getattr(owner, '__qualname__', type(owner).__qualname__)}.{name}"
    fix = f"({VERSIONS}): update fakedetect/search/adapter.py"
    assert hasattr(owner, name), f"{where} is gone {fix}"
    if params is not None:
        got = list(inspect.signature(getattr(owner, name)).parameters)
        assert got == params, f"{where} now takes {got}, not {params} {fix}"


def stock_sweeper(**kwargs: object) -> adapter.StockSweeper:
    args = dict(
        sampler=None,
        direction="maximize",
        storage=None,
        study_name="s",
        n_trials=1,
        n_jobs=1,
        max_failure_rate=0.0,
        custom_search_space=None,
        params=None,
    )
    return adapter.StockSweeper(**{**args, **kwargs})


def test_hydra_optuna_sweeper_internals() -> None:
    require(adapter, "create_params_from_overrides", ["arguments"])
    for name in ("_process_searchspace_config", "_parse_sweeper_params_config", "_get_directions"):
        require(STOCK, name, ["self"])
    require(
        STOCK, "_configure_trials", ["self", "trials", "search_space_distributions", "fixed_params", "fixed_overrides"]
    )
    require(STOCK, "setup", ["self", "hydra_context", "task_function", "config"])
    init = set(inspect.signature(STOCK.__init__).parameters) - {"self"}
    passed = {f.name for f in dataclasses.fields(FakedetectOptunaSweeperConf)} - OURS
    assert passed == init, (
        f"OptunaSweeperImpl.__init__ takes {sorted(init)}, the sweeper config passes "
        f"{sorted(passed)} ({VERSIONS}): update the config or fakedetect/search/adapter.py"
    )


def test_stock_sweeper_keeps_the_state_the_sweep_reads() -> None:
    sweeper = stock_sweeper(params=OmegaConf.create({"x": "range(1, 4)", "y": "choice(a, b)", "z": "1"}))
    for name in (
        "storage",
        "study_name",
        "n_trials",
        "n_jobs",
        "max_failure_rate",
        "custom_search_space_extender",
        "job_idx",
    ):
        require(sweeper, name)
    launcher = object()
    with mock.patch.object(Plugins.instance(), "instantiate_launcher", return_value=launcher):
        config = OmegaConf.create({"hydra": {"sweep": {"dir": "d"}}})
        sweeper.setup(hydra_context=None, task_function=None, config=config)
    assert sweeper.launcher is launcher and sweeper.config.hydra.sweep.dir == "d", f"setup changed ({VERSIONS})"
    assert sweeper.directions() == ["maximize"]

    distributions, fixed, fixed_overrides = sweeper.search_space(["y=b", "~w"])
    assert distributions == {"x": IntDistribution(1, 3)} and fixed == {"z": "1", "y": "b"}, VERSIONS
    assert fixed_overrides == ["~w"], VERSIONS
    seen = []
    sweeper.custom_search_space_extender = lambda cfg, trial: seen.append(trial.suggest_int("v", 0, 9))
    trial = optuna.create_study().ask()
    (overrides,) = sweeper.configure_trials([trial], (distributions, fixed, fixed_overrides))
    assert overrides == (f"x={trial.params['x']}", f"v={seen[0]}", "z=1", "y=b", "~w"), f"{overrides} ({VERSIONS})"


def test_optuna_internals() -> None:
    require(Trial, "__init__", ["self", "study", "trial_id"])
    require(Trial, "_suggest", ["self", "name", "distribution"])
    study = optuna.create_study()
    trial = study.ask()
    require(trial, "_trial_id")
    assert adapter.suggest(trial, "c", CategoricalDistribution(["a", "b"])) in ("a", "b") and "c" in trial.params
    reopened = adapter.reopen_trial(study, adapter.trial_id(trial))
    assert reopened.number == trial.number and reopened.params == trial.params, VERSIONS
    frozen = study.get_trials(deepcopy=False)[0]
    assert isinstance(frozen, FrozenTrial) and adapter.trial_id(frozen) == adapter.trial_id(trial), VERSIONS


def test_optuna_heartbeat_internals(tmp_path: Path) -> None:
    """The heartbeat thread records a trial's heartbeat through the storage's interface, and the journal storage
    implements every abstract method of that interface (one Optuna adds would make it abstract)."""
    require(BaseHeartbeat, "_get_stale_trial_ids", ["self", "study_id"])
    require(BaseHeartbeat, "record_heartbeat", ["self", "trial_id"])
    storage = adapter.HeartbeatJournalStorage(JournalFileBackend(str(tmp_path / "j.log")), 60, 120, None)
    assert not inspect.isabstract(adapter.HeartbeatJournalStorage), f"{VERSIONS}: BaseHeartbeat grew a method"
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    with mock.patch.object(storage, "record_heartbeat") as record, adapter.heartbeat_thread(storage, trial):
        pass
    record.assert_called_once_with(adapter.trial_id(trial))


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_an_exhausted_brute_force_sampler_is_told_not_raised() -> None:
    study = optuna.create_study(sampler=optuna.samplers.BruteForceSampler())
    trial = study.ask()
    adapter.suggest(trial, "x", CategoricalDistribution(["only"]))
    assert adapter.tell(study, trial, TrialState.COMPLETE, [1.0]), (
        f"BruteForceSampler no longer stops the study with 'Study.stop' ({VERSIONS}): update adapter.tell"
    )
    assert study.trials[0].state is TrialState.COMPLETE
    study = optuna.create_study()
    assert not adapter.tell(study, study.ask(), TrialState.FAIL, None)


def test_a_failed_jobs_exception_is_read_without_raising() -> None:
    assert "_return_value" in {f.name for f in dataclasses.fields(JobReturn)}, f"JobReturn changed ({VERSIONS})"
    error = ValueError("bad")
    job = JobReturn(status=JobStatus.FAILED, _return_value=error)
    assert adapter.job_error(job) is error
    with pytest.raises(ValueError):  # why the adapter reads the field, not the property
        job.return_value  # noqa: B018


def private_names(path: Path) -> tuple[set[str], set[str]]:
    """The `x._name` attributes a file reads (its own `self._helpers` included), and the private modules it imports
    from."""
    nodes = list(ast.walk(ast.parse(path.read_text())))
    attributes = {n.attr for n in nodes if isinstance(n, ast.Attribute) and n.attr.startswith("_") and n.attr[1] != "_"}
    modules = {n.module for n in nodes if isinstance(n, ast.ImportFrom) and n.module and n.module != "__future__"}
    return attributes, {m for m in modules if any(part.startswith("_") for part in m.split("."))}


def test_only_the_adapter_touches_internals_and_each_is_checked() -> None:
    path = ROOT / "fakedetect" / "search" / "adapter.py"
    used, _ = private_names(path)
    assert used <= CHECKED, f"adapter.py touches {sorted(used - CHECKED)}: add a check for it here"
    others = [*(ROOT / "fakedetect" / "search").glob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")]
    for other in others:
        if other != path:
            attributes, modules = private_names(other)
            leaks = (attributes & CHECKED) | modules
            assert not leaks, f"{other.relative_to(ROOT)} uses {sorted(leaks)}: go through fakedetect/search/adapter.py"
