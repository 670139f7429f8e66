"""Optuna searches: the configs compose, and tiny real sweeps store, resume, fail, prune and report."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import sqlalchemy.exc
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.trial import TrialState

from fakedetect.search.adapter import heartbeat_thread, parse_overrides, trial_id
from fakedetect.search.pruning import OptunaTrialCallback
from fakedetect.search.report import trial_row, write_report
from fakedetect.search.storage import Heartbeat, load_study, open_storage, retry_history
from fakedetect.search.sweeper import SearchSweeper, outcome, room
from fakedetect.train import metric_value
from fakedetect.utils.builders import build_model
from fakedetect.utils.errors import NonFiniteError
from tests.conftest import CONF, QUIET, ROOT, SUBSET, compose_config, event_tags

# every search config; one whose model is not in conf/model/ is skipped until it is
SEARCHES = sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml"))
MODELS = {"resnet18_optuna": "resnet18", "autoencoder_optuna": "ae_transfer"}


def sweeper_for(cfg_out: Path, *overrides: str) -> SearchSweeper:
    """The sweeper Hydra would build for `-m <overrides>`, with its config, outside a Hydra run."""
    cfg = compose_config("train", [*overrides, "data.root=x"], cfg_out)
    plugin = instantiate(
        OmegaConf.create(OmegaConf.to_container(HydraConfig.get().sweeper, resolve=True)),
        _recursive_=False,
        _execution_whitelist_="hydra_plugins.fakedetect_sweeper.*",
    )
    plugin.sweeper.config = cfg
    return plugin.sweeper


@pytest.mark.parametrize("search", SEARCHES)
def test_search_config_names_real_keys(search: str, tmp_path: Path) -> None:
    model = MODELS.get(search)
    if model and not (CONF / "model" / f"{model}.yaml").exists():
        pytest.skip(f"hparams_search={search} needs model={model}, not written yet")
    base = [f"hparams_search={search}", "data.root=x"]
    cfg = compose_config("train", base, tmp_path)
    sweeper = HydraConfig.get().sweeper
    assert cfg.test is False, "a search must not see the test split"
    assert sweeper.study_name and str(sweeper.storage).startswith(f"sqlite:///{tmp_path}/optuna/")
    # each conditional space is checked in a config where its condition holds
    for condition, keys in [(None, sweeper.params), *sweeper.conditional_params.items()]:
        cfg = compose_config("train", [*base, condition] if condition else base, tmp_path)
        for key in keys:
            if (CONF / key).is_dir():  # a config group, searched as a choice of its options
                continue
            parent, _, last = key.rpartition(".")
            node = OmegaConf.select(cfg, parent)
            assert node is not None and (last in node if OmegaConf.is_dict(node) else int(last) < len(node)), key


def test_fakefinder_space_matches_the_write_up(tmp_path: Path) -> None:
    compose_config("train", ["hparams_search=optuna", "data.root=x"], tmp_path)
    params = HydraConfig.get().sweeper.params
    distributions, _, _ = parse_overrides([f"{k}={v}" for k, v in params.items()])
    d = {
        k: (
            getattr(v, "low", None),
            getattr(v, "high", None),
            getattr(v, "step", None),
            getattr(v, "log", None),
            getattr(v, "choices", None),
        )
        for k, v in distributions.items()
    }
    assert d["model.net.n_layers"][:3] == (1, 3, 1)
    assert all(d[f"model.net.filters.{i}"][:3] == (8, 64, 8) for i in range(3))
    assert all(d[f"model.net.kernel_sizes.{i}"][4] == (3, 5) for i in range(3))
    assert d["model.net.dropout"][:2] == (0.1, 0.5) and d["model.net.fc_size"][:3] == (64, 512, 64)
    assert d["model.optimizer.lr"][:2] == (1e-4, 1e-2) and d["model.optimizer.lr"][3] is True
    assert d["data.resolution"][4] == (16, 32, 64) and d["data.batch_size"][4] == (8, 16)


def test_group_choice_searches_an_options_params_only_when_chosen(tmp_path: Path) -> None:
    search = "hparams_search=model_loss_optuna"
    sweeper = sweeper_for(tmp_path, search)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    trials = [study.ask() for _ in range(12)]
    overrides = sweeper.configure_trials(trials, sweeper.search_space([]))
    assert {t.params["model"] for t in trials} == {"cnn", "mlp"}
    assert {t.params["loss"] for t in trials} == {"bce", "bce_smooth", "focal"}
    for trial, trial_overrides in zip(trials, overrides, strict=True):
        cnn, loss = trial.params["model"] == "cnn", trial.params["loss"]
        assert ("model.net.n_layers" in trial.params) == cnn and ("model.net.hidden.0" in trial.params) != cnn
        assert ("loss.gamma" in trial.params) == (loss == "focal")
        assert ("loss.label_smoothing" in trial.params) == (loss == "bce_smooth")
        cfg = compose_config("train", [search, "data.root=x", *trial_overrides], tmp_path)
        assert cfg.optuna_trial.trial_id == trial_id(trial)
        model = build_model(cfg)
        assert type(model.net).__name__ == ("FlexibleCNN" if cnn else "MLP")
        assert type(model.loss).__name__ == ("FocalLoss" if loss == "focal" else "BCEWithLogits")
        if loss == "focal":
            assert model.loss.gamma == pytest.approx(trial.params["loss.gamma"])
        if not cnn:
            assert model.net.layers[1].out_features == trial.params["model.net.hidden.0"]


def test_job_outcomes() -> None:
    def ret(value: object, ok: bool = True) -> JobReturn:
        job = JobReturn(status=JobStatus.COMPLETED if ok else JobStatus.FAILED)
        job.return_value = value
        return job

    assert outcome(ret(0.9), 1) == (TrialState.COMPLETE, [0.9], None)
    assert outcome(ret([0.9, 1000.0]), 2) == (TrialState.COMPLETE, [0.9, 1000.0], None)
    assert outcome(ret(optuna.TrialPruned("val/acc_best=0.5 at epoch 1"), ok=False), 1) == (
        TrialState.PRUNED,
        None,
        "val/acc_best=0.5 at epoch 1",
    )
    state, _, reason = outcome(ret(torch.cuda.OutOfMemoryError("CUDA out of memory"), ok=False), 1)
    assert state is TrialState.FAIL and reason == "OutOfMemoryError: CUDA out of memory"
    assert outcome(ret(float("nan")), 1)[0] is TrialState.FAIL
    diverged = NonFiniteError("training diverged: the training loss is nan at step 3")
    assert outcome(ret(diverged, ok=False), 1) == (TrialState.PRUNED, None, str(diverged))
    assert outcome(ret(None), 1)[0] is TrialState.FAIL
    assert metric_value({"val/acc_best": 0.9, "params": 10.0}, ["val/acc_best", "params"]) == [0.9, 10.0]


def fake_trainer(**metrics: float) -> SimpleNamespace:
    return SimpleNamespace(
        sanity_checking=False,
        current_epoch=0,
        is_global_zero=True,
        callback_metrics={k.replace("__", "/"): torch.tensor(v) for k, v in metrics.items()},
        strategy=SimpleNamespace(broadcast=lambda x: x),
    )


@pytest.mark.parametrize("storage", ["sqlite:///{tmp}/s.db", "journal:{tmp}/s.log"])
def test_a_trial_whose_heartbeats_stop_is_failed_and_its_point_queued_once(storage: str, tmp_path: Path) -> None:
    """Optuna's heartbeat check, on both file storages (the journal's heartbeats are fakedetect's): a trial whose
    heartbeats go on is left RUNNING; one whose heartbeats stopped is FAIL after grace_period, its parameters queued
    again once (max_retry=1); the study counts the two as one trial, and the retry is asked first."""
    store = open_storage(storage.format(tmp=tmp_path), Heartbeat(interval=1, grace_period=1, max_retry=1))
    study = optuna.create_study(storage=store)
    space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    dead, alive = study.ask(space), study.ask(space)
    with heartbeat_thread(store, dead):
        pass  # one heartbeat, then its worker is gone
    with heartbeat_thread(store, alive), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        time.sleep(2.5)
        optuna.storages.fail_stale_trials(study)
        assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
        assert room(study.trials, 3) == 2, "the failed trial and its retry are one: 2 held, the retry queued"
        retry = study.ask()
    assert retry.number == 2 and retry.params == dead.params and retry_history(study.trials[2]) == [0]
    study.tell(retry, state=TrialState.FAIL)
    study.tell(alive, 0.5)
    rows = {r["number"]: r for r in (trial_row(t, ["value"]) for t in study.trials)}
    assert rows[0]["reason"] and "no heartbeat" in str(rows[0]["reason"]) and rows[2]["retry_of"] == 0


def test_a_worker_finding_the_study_full_waits_to_rerun_a_dead_workers_trial(tmp_path: Path) -> None:
    """study_trials=2, one trial done and one RUNNING whose worker died: asking waits out the grace period, then
    gets the dead trial's retry; after it, the study is full and nothing is running, so asking ends the worker."""
    sweeper = sweeper_for(
        tmp_path,
        "hparams_search=optuna",
        f"hydra.sweeper.storage='sqlite:///{tmp_path}/s.db'",
        "hydra.sweeper.study_trials=2",
        "hydra.sweeper.heartbeat.interval=1",
        "hydra.sweeper.heartbeat.grace_period=2",
    )
    study = sweeper._open_study()
    with sweeper._asked(study, 2) as (done, dead):
        pass  # the heartbeats of both stop here; `dead` is never told
    study.tell(done, 0.5)
    start = time.monotonic()
    with sweeper._asked(study, 1) as trials:
        assert [t.number for t in trials] == [2] and time.monotonic() - start > 2
    study.tell(trials[0], 0.6)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert retry_history(study.trials[2]) == [dead.number]
    with sweeper._asked(study, 1) as trials:
        assert trials == []


def test_a_trial_failed_as_stale_while_it_ran_here_is_left_failed(tmp_path: Path) -> None:
    """A worker whose heartbeats missed the storage for grace_period finds its trial failed by another worker:
    its result is dropped (the retry runs the point), and the sweep goes on."""
    sweeper = sweeper_for(tmp_path, "hparams_search=optuna", f"hydra.sweeper.storage='sqlite:///{tmp_path}/s.db'")
    study = sweeper._open_study()
    trial = study.ask()
    study.tell(trial, state=TrialState.FAIL)  # as the other worker's heartbeat check does
    job = JobReturn(
        status=JobStatus.COMPLETED, hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path)}}})
    )
    job.return_value = 0.9
    assert sweeper._tell(study, trial, job) is TrialState.FAIL
    assert study.trials[0].state is TrialState.FAIL and study.trials[0].values is None


def test_trial_callback_reports_and_prunes(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.set_user_attr("pruner", {"_target_": "optuna.pruners.ThresholdPruner", "lower": 0.8})
    trial = study.ask()
    callback = OptunaTrialCallback(storage, "s", trial_id(trial), monitor="val/acc_best")
    callback.setup(None, None, "fit")
    with pytest.raises(optuna.TrialPruned, match="ThresholdPruner"):
        callback.on_validation_end(fake_trainer(val__acc_best=0.6), None)
    assert study.trials[0].intermediate_values == {0: pytest.approx(0.6)}


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_report_of_a_multi_objective_study(tmp_path: Path) -> None:
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_metric_names(["val/acc_best", "params"])
    for i in range(6):
        trial = study.ask({"model.net.fc_size": optuna.distributions.IntDistribution(64, 512, step=64)})
        trial.set_user_attr("n_params", 1000 * (i + 1))
        study.tell(trial, [0.7 + 0.04 * (i % 3), 1000.0 * (i + 1)])
    out = write_report(study, tmp_path / "report")
    best = list(csv.DictReader((out / "best_trials.csv").open()))
    assert {int(r["number"]) for r in best} == {t.number for t in study.best_trials}
    assert (out / "plots" / "pareto_front.png").stat().st_size > 0
    assert "val/acc_best" in (out / "best_trials.md").read_text()


def sweep_command(
    tmp: Path, cifake: Path, cache: Path, name: str, *overrides: str, search: str = "optuna"
) -> tuple[list[str], dict[str, str]]:
    """`python -m fakedetect.train -m hparams_search=<search>` on the shared CIFAKE subset, 1 epoch per trial."""
    command = [
        sys.executable,
        "-m",
        "fakedetect.train",
        "-m",
        f"hparams_search={search}",
        f"data.root={cifake}",
        *SUBSET,
        "data.resolution=32",
        "data.batch_size=128",
        "trainer=cpu",
        "trainer.max_epochs=1",
        *QUIET,
        f"paths.log_dir={tmp}",
        f"hydra.sweep.dir={tmp / name}",
        *overrides,
    ]
    # one thread per trial: these nets are tiny, and 2 OpenMP threads on cores other tests share are far slower
    return command, {**os.environ, "FAKEDETECT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}


def start_workers(
    tmp: Path, cifake: Path, cache: Path, storage: str, trials: int, *overrides: str, n: int = 2
) -> list[subprocess.Popen[str]]:
    """`n` sweep workers (worker0, worker1, ...) started at once on one study of `trials` trials at `storage`."""
    commands = [
        sweep_command(
            tmp,
            cifake,
            cache,
            f"worker{i}",
            f"hydra.sweeper.storage={storage}",
            f"hydra.sweeper.n_trials={trials}",
            f"hydra.sweeper.study_trials={trials}",
            "hydra.sweeper.report.test_best=false",
            *overrides,
        )
        for i in range(n)
    ]
    return [
        subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for c, env in commands
    ]


def run_sweep(
    tmp: Path, cifake: Path, cache: Path, name: str, *overrides: str, search: str = "optuna"
) -> subprocess.CompletedProcess:
    command, env = sweep_command(tmp, cifake, cache, name, *overrides, search=search)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def load(tmp: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp}/optuna/{name}.db")


def test_sweep_stores_resumes_without_repeats_and_reports(cifake_path: Path, cache_dir: Path, tmp_path: Path) -> None:
    run_sweep(tmp_path, cifake_path, cache_dir, "first", "hydra.sweeper.n_trials=2")
    study = load(tmp_path, "fakefinder")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for trial in study.trials:
        assert trial.user_attrs["n_params"] > 0 and trial.user_attrs["train_time_s"] > 0
        assert Path(trial.user_attrs["ckpt_path"]).exists() and len(trial.intermediate_values) == 1
    report = tmp_path / "first" / "report"
    rows = list(csv.DictReader((report / "trials.csv").open()))
    assert [int(r["number"]) for r in rows] == [0, 1] and rows[0]["n_params"]
    best = list(csv.DictReader((report / "best_trials.csv").open()))
    assert int(best[0]["number"]) == study.best_trial.number and float(best[0]["test/acc"]) > 0.5
    assert f"| {study.best_trial.number} | COMPLETE |" in (report / "best_trials.md").read_text()
    assert {p.name for p in (report / "plots").glob("*.png")} >= {"history.png", "timeline.png"}
    for run in sorted((report / "tensorboard").glob("trial_*")):
        assert "_hparams_/session_start_info" in event_tags(run, "hparams"), run
    assert len(list((report / "tensorboard").glob("trial_*"))) == 2

    run_sweep(
        tmp_path, cifake_path, cache_dir, "second", "hydra.sweeper.n_trials=2", "hydra.sweeper.report.test_best=false"
    )
    trials = load(tmp_path, "fakefinder").trials
    assert len(trials) == 4, "the same study name resumes the study"
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4, "a resumed seed must not replay trials"
    assert len(list(csv.DictReader((tmp_path / "second" / "report" / "trials.csv").open()))) == 4


def test_failed_diverged_and_pruned_trials_are_recorded_and_the_sweep_goes_on(
    cifake_path: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """lr -1 is refused by torch's Adam (the trial raises: FAIL); at lr 1e9 the loss turns NaN within a few steps
    (PRUNED with the one line as its reason, so the sampler learns its region is bad; no score, no checkpoint); a
    pruner that wants accuracy > 1 prunes the third after its first epoch."""
    run_sweep(
        tmp_path,
        cifake_path,
        cache_dir,
        "sweep",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.params=null",
        "model.optimizer.lr=choice(-1, 1e9, 1e-3)",
        "hydra/sweeper/sampler=brute_force",
        "hydra/sweeper/pruner=threshold",
        "hydra.sweeper.pruner.lower=1.01",
        "trainer.max_epochs=3",
    )
    trials = {t.params["model.optimizer.lr"]: t for t in load(tmp_path, "fakefinder").trials}
    assert trials[-1].state is TrialState.FAIL
    assert "model.optimizer: Invalid learning rate: -1" in trials[-1].user_attrs["fail_reason"]
    diverged = trials[1e9]
    assert diverged.state is TrialState.PRUNED and diverged.values is None and not diverged.intermediate_values
    assert "training diverged: the training loss is" in diverged.user_attrs["prune_reason"]
    run = Path(diverged.user_attrs["output_dir"])
    assert not list(run.rglob("*.ckpt")) and not (run / "metrics.json").exists()
    pruned = trials[1e-3]
    assert pruned.state is TrialState.PRUNED and "ThresholdPruner" in pruned.user_attrs["prune_reason"]
    assert list(pruned.intermediate_values) == [0], "pruned after its first epoch of three"
    rows = {
        r["reason"].split(":")[0]: r["state"]
        for r in csv.DictReader((tmp_path / "sweep" / "report" / "trials.csv").open())
    }
    assert rows["ConfigError"] == "FAIL" and rows["training diverged"] == "PRUNED"


@pytest.mark.slow
def test_multi_objective_sweep_ends_with_the_pareto_front(cifake_path: Path, cache_dir: Path, tmp_path: Path) -> None:
    run_sweep(tmp_path, cifake_path, cache_dir, "sweep", "hydra.sweeper.n_trials=3", search="optuna_pareto")
    study = load(tmp_path, "fakefinder_pareto")
    assert len(study.directions) == 2 and all(t.values[1] == t.user_attrs["n_params"] for t in study.trials)
    report = tmp_path / "sweep" / "report"
    assert len(list(csv.DictReader((report / "best_trials.csv").open()))) == len(study.best_trials)
    assert (report / "plots" / "pareto_front.png").exists()
    assert len(list((tmp_path / "sweep" / "test").glob("trial_*/metrics.json"))) == len(study.best_trials)


@pytest.mark.parametrize("storage", ["sqlite:///{tmp}/shared.db", "journal:{tmp}/shared.log"])
def test_parallel_workers_share_one_study(storage: str, cifake_path: Path, cache_dir: Path, tmp_path: Path) -> None:
    """Two processes on one storage, same seed, together finish the study's 6 trials: none twice, none extra."""
    url = storage.format(tmp=tmp_path)
    workers = start_workers(tmp_path, cifake_path, cache_dir, f"'{url}'", 6)
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
    trials = load_study(url, "fakefinder").trials
    assert [t.number for t in trials] == list(range(6)) and all(t.state is TrialState.COMPLETE for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6, "workers with one seed drew the same point"
    ran = [
        sum(Path(t.user_attrs["output_dir"]).is_relative_to(tmp_path / f"worker{i}") for t in trials) for i in range(2)
    ]
    assert sum(ran) == 6 and min(ran) >= 1, f"trials per worker: {ran}"


def test_a_killed_sweep_leaves_a_report_and_its_running_trial_is_failed_and_rerun(
    cifake_path: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """Kill a sweep while its second trial runs: the report of the first is there; once the killed trial's heartbeat
    is grace_period old, the next sweep on the study marks it FAIL and runs its parameters again."""
    beats = ("hydra.sweeper.heartbeat.interval=1", "hydra.sweeper.heartbeat.grace_period=2")
    command, env = sweep_command(
        tmp_path,
        cifake_path,
        cache_dir,
        "killed",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.report.test_best=false",
        "trainer.max_epochs=2",
        *beats,
    )
    sweep = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "optuna" / "fakefinder.db"
    deadline = time.monotonic() + 300
    while sweep.poll() is None and time.monotonic() < deadline:
        try:  # not before the sweep has made the file: two schema creations at once collide
            trials = load(tmp_path, "fakefinder").trials if db.exists() else []
        except (KeyError, sqlalchemy.exc.SQLAlchemyError):  # the file is there, its schema or the study not yet
            trials = []
        if len(trials) >= 2 and trials[1].state is TrialState.RUNNING:
            break
        time.sleep(0.5)
    sweep.kill()
    sweep.wait()
    assert [t.state for t in load(tmp_path, "fakefinder").trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    rows = list(csv.DictReader((tmp_path / "killed" / "report" / "trials.csv").open()))
    assert [(r["number"], r["state"]) for r in rows] == [("0", "COMPLETE")], "the report is rewritten per trial"

    time.sleep(3)  # past the grace period
    run_sweep(
        tmp_path,
        cifake_path,
        cache_dir,
        "resumed",
        "hydra.sweeper.n_trials=1",
        "hydra.sweeper.report.test_best=false",
        *beats,
    )
    trials = load(tmp_path, "fakefinder").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].params == trials[1].params and retry_history(trials[2]) == [1]
    rows = list(csv.DictReader((tmp_path / "resumed" / "report" / "trials.csv").open()))
    assert "no heartbeat" in rows[1]["reason"] and rows[2]["retry_of"] == "1"
