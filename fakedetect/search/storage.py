"""Where a study lives, so that several workers (processes, or machines) can run one search.

- `sqlite:///path/study.db`: one file, switched to SQLite's write-ahead journal (WAL) so readers never block the
  writer, opened with a long busy timeout so that concurrent writers wait instead of failing "database is locked".
- `journal:path/study.log`: Optuna's append-only journal file, the storage Optuna recommends for many processes
  on one machine or on NFS.
- any other SQLAlchemy URL (`postgresql+psycopg://...`): a database server, for workers on many machines.

A sweep's trials send Optuna heartbeats while they run; the next worker to ask for a trial fails one whose
heartbeats stopped more than `grace_period` seconds ago (its worker was killed, or its machine is gone) and queues
its parameters again (Optuna's RetryHeartbeatStaleTrialCallback). That needs no shared host or clock: RDB storages
time heartbeats by the database server's clock, the journal by the clock of the machine that reads it.

Workers ask for trials under a lock, so counting the study's trials and adding one is atomic: together they stop at
exactly `study_trials`. The lock is a file beside a SQLite or journal file, and a transaction-level advisory lock
on a PostgreSQL server (released by the server if its worker dies). Other servers (MySQL) get no lock: two workers
asking in the same instant near the end may add one trial more.
"""

from __future__ import annotations

import contextlib
import sqlite3
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NamedTuple

import optuna
import sqlalchemy
from filelock import FileLock
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from fakedetect.search.adapter import HeartbeatJournalStorage
from fakedetect.utils.errors import ConfigError

JOURNAL = "journal:"
# seconds a SQLite writer waits for another worker's transaction before giving up
SQLITE_TIMEOUT_S = 120
# the PostgreSQL advisory lock key (any 64-bit number, the same in every worker) of fakedetect's ask lock
ASK_LOCK_KEY = int.from_bytes(b"fdetask!", "big", signed=True)
STORAGE_FORMS = "sqlite:///path/study.db, journal:path/study.log or a server's URL (postgresql+psycopg://user@host/db)"


class Heartbeat(NamedTuple):
    """Optuna's heartbeat settings (`hydra.sweeper.heartbeat`): seconds between heartbeats, seconds of silence
    after which a RUNNING trial is failed, and how often one trial's parameters are queued again."""

    interval: int
    grace_period: int
    max_retry: int | None


def storage_file(url: str) -> Path | None:
    """The file a storage URL keeps its study in; None for a server or an in-memory database."""
    if url.startswith(JOURNAL):
        return Path(url.removeprefix(JOURNAL))
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database)
    return None


def check_storage(url: str, key: str) -> None:
    """A storage URL whose form, database and driver are known, before any trial runs: one ConfigError naming
    `key` (SQLAlchemy parses the URL, loads its dialect and imports the dialect's driver)."""
    if url.startswith(JOURNAL):
        if not url.removeprefix(JOURNAL).strip():
            raise ConfigError(f"{key}={url}: a journal storage names its file, e.g. journal:outputs/optuna/study.log")
        return
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except NoSuchModuleError:  # a subclass of ArgumentError
        raise ConfigError(f"{key}={url!r}: no database '{url.split(':')[0]}' is known; use {STORAGE_FORMS}") from None
    except ArgumentError:
        raise ConfigError(f"{key}={url!r} is not a storage URL; use {STORAGE_FORMS}") from None
    try:
        dialect.import_dbapi()
    except ImportError as err:
        raise ConfigError(
            f"{key}={describe(url)}: the driver of {parsed.drivername} is not installed ({err}); install it, or "
            f"name an installed one (e.g. postgresql+psycopg://)"
        ) from None


def open_storage(url: str, heartbeat: Heartbeat | None = None) -> BaseStorage:
    """The storage behind `url`, its folder made, ready for concurrent workers; with `heartbeat`, the storage a
    sweep asks trials of (a job only reports to its trial, and needs none)."""
    path = storage_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are experimental
        retry = RetryHeartbeatStaleTrialCallback(max_retry=heartbeat.max_retry) if heartbeat else None
        if url.startswith(JOURNAL):
            backend = JournalFileBackend(str(path))
            if heartbeat is None:
                return JournalStorage(backend)
            return HeartbeatJournalStorage(backend, heartbeat.interval, heartbeat.grace_period, retry)
        beats: dict[str, Any] = {
            "heartbeat_interval": heartbeat.interval if heartbeat else None,
            "grace_period": heartbeat.grace_period if heartbeat else None,
            "heartbeat_stale_trial_callback": retry,
        }
        # one worker at a time: two workers creating Optuna's tables at once collide on them (SQLite's schema
        # version, PostgreSQL's types), and WAL (a property of the file, kept by every later connection) needs the
        # file to itself
        with ask_lock(url):
            if path is None:
                return RDBStorage(url, **beats)
            with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S)) as db:
                db.execute("PRAGMA journal_mode=WAL")
            return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}}, **beats)


def ask_lock(url: str | None) -> AbstractContextManager:
    """A lock that every worker of a storage shares; a no-op for an in-memory study or a server other than
    PostgreSQL."""
    path = storage_file(url) if url else None
    if path is not None:
        # not `<file>.lock`: Optuna's journal takes that name for its own lock
        return FileLock(f"{path}.ask.lock")
    if url and make_url(url).get_backend_name() == "postgresql":
        return advisory_lock(url)
    return contextlib.nullcontext()


@contextlib.contextmanager
def advisory_lock(url: str) -> Iterator[None]:
    """PostgreSQL's advisory lock, held by a transaction on a connection of its own until the block ends, or until
    the server sees the connection drop (its worker killed)."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": ASK_LOCK_KEY})
            yield
    finally:
        engine.dispose()


def retry_history(trial: FrozenTrial) -> list[int]:
    """The trials that `trial` runs again, the first one first; empty unless a heartbeat check queued it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retry_history(trial)


def describe(url: str | None) -> str:
    """The storage URL for logs and files, its password hidden."""
    if not url:
        return "memory"
    return url if url.startswith(JOURNAL) else make_url(url).render_as_string(hide_password=True)


def load_study(url: str, study_name: str, **kwargs: Any) -> optuna.Study:
    return optuna.load_study(study_name=study_name, storage=open_storage(url), **kwargs)
