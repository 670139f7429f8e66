"""Searches shared by several workers, on a real PostgreSQL server that the test session starts (pgserver's wheel),
and on the file storages: exact trial counts under concurrent asks, and a killed worker's trial recovered by
Optuna's heartbeats on another worker."""

from __future__ import annotations

import collections
import csv
import multiprocessing
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import FrozenTrial, TrialState

from fakedetect.search.storage import load_study, retry_history
from fakedetect.search.sweeper import SearchSweeper, quote
from tests.conftest import run_command
from tests.test_search import start_workers, sweeper_for


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """PostgreSQL 16 from the pgserver wheel, one for the session, stopped at its end; where it cannot start, the
    tests that need it are skipped with the reason."""
    try:
        import pgserver

        server = pgserver.get_server(tmp_path_factory.mktemp("postgres"), cleanup_mode="stop")
    except Exception as e:  # no wheel for this platform, no pgserver installed, a server that does not come up
        pytest.skip(f"no PostgreSQL server: {type(e).__name__}: {e}")
    yield server
    server.cleanup()


@pytest.fixture
def postgres_url(postgres_server: Any, request: pytest.FixtureRequest) -> str:
    """A new database on the session's server, for one test."""
    name = re.sub(r"\W+", "_", request.node.name.lower())[:60]
    postgres_server.psql(f"CREATE DATABASE {name};")
    return postgres_server.get_uri(name).replace("postgresql://", "postgresql+psycopg://", 1)


def ask_until_full(sweeper: SearchSweeper) -> None:
    """One worker: ask for a trial as the sweep loop does, tell it at once, until the study holds its trials."""
    study = sweeper._open_study()
    while True:
        with sweeper._asked(study, 1) as trials:
            if not trials:
                return
        study.tell(trials[0], 0.5)


@pytest.mark.parametrize("backend", ["postgresql", "sqlite", "journal"])
def test_workers_asking_at_once_stop_at_exactly_study_trials(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """4 processes ask for trials of one study as fast as they can: together they add exactly study_trials
    (with the ask lock disabled, about half of these runs added 25 to 27)."""
    url = {"sqlite": f"sqlite:///{tmp_path}/s.db", "journal": f"journal:{tmp_path}/s.log"}.get(backend)
    url = url or request.getfixturevalue("postgres_url")
    sweeper = sweeper_for(
        tmp_path,
        "hparams_search=optuna",
        f"hydra.sweeper.storage={quote(url)}",
        "hydra.sweeper.study_trials=24",
        "hydra.sweeper.heartbeat.interval=1",
    )
    fork = multiprocessing.get_context("fork")  # the sweeper, composed here, travels as it is
    workers = [fork.Process(target=ask_until_full, args=(sweeper,)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0
    trials = load_study(url, "fakefinder").trials
    assert len(trials) == 24, f"{len(trials)} trials"
    assert all(t.state is TrialState.COMPLETE for t in trials)


def trials_of(url: str) -> list[FrozenTrial]:
    """The study's trials; none before a worker has created it."""
    try:
        return load_study(url, "fakefinder").trials
    except KeyError:
        return []


def test_a_killed_workers_trial_is_failed_and_rerun_by_the_other(
    postgres_url: str, cifake_path: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """Two sweep workers on one PostgreSQL study; one is SIGKILLed while its trial runs. The other fails that trial
    once its heartbeat is grace_period old, runs its parameters again, and the study ends with exactly study_trials
    complete trials, which search_report reads back."""
    victim, survivor = start_workers(
        tmp_path,
        cifake_path,
        cache_dir,
        quote(postgres_url),
        4,
        "hydra.sweeper.heartbeat.interval=1",
        "hydra.sweeper.heartbeat.grace_period=3",
    )
    victim_id, survivor_id = (f"{socket.gethostname()}:{p.pid}" for p in (victim, survivor))
    deadline = time.monotonic() + 300
    running: list[FrozenTrial] = []
    while not running and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
        trials = trials_of(postgres_url)
        running = [t for t in trials if t.state is TrialState.RUNNING and t.user_attrs.get("worker") == victim_id]
    assert running, "the victim never ran a trial"
    victim.kill()
    victim.wait()
    _, err = survivor.communicate(timeout=600)
    assert survivor.returncode == 0, err[-3000:]

    killed = running[0].number
    trials = load_study(postgres_url, "fakefinder").trials
    states = collections.Counter(t.state for t in trials)
    assert len(trials) == 5 and states == {TrialState.COMPLETE: 4, TrialState.FAIL: 1}, states
    assert trials[killed].state is TrialState.FAIL
    (retry,) = (t for t in trials if retry_history(t))
    assert retry_history(retry) == [killed] and retry.params == trials[killed].params
    assert retry.state is TrialState.COMPLETE and retry.user_attrs["worker"] == survivor_id

    out = tmp_path / "report"
    done = run_command("search_report", f"storage={quote(postgres_url)}", "study=fakefinder", f"out={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {int(r["number"]): r for r in csv.DictReader((out / "trials.csv").open())}
    assert "no heartbeat" in rows[killed]["reason"] and rows[retry.number]["retry_of"] == str(killed)
    assert {rows[n]["worker"] for n in rows} == {victim_id, survivor_id}
