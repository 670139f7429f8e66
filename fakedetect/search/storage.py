"""Where a study lives, so that several workers (processes, or machines sharing a disk) can run one search.

- `sqlite:///path/study.db`: one file, switched to SQLite's write-ahead journal (WAL) so readers never block the
  writer, opened with a long busy timeout so that concurrent writers wait instead of failing "database is locked".
- `journal:path/study.log`: Optuna's append-only journal file, the storage Optuna recommends for many processes
  on one machine or on NFS.
- any other SQLAlchemy URL (`postgresql://...`, `mysql://...`): a database server, for workers on many machines.

Workers on a file storage ask for trials under a file lock beside it, so counting the study's trials and adding
one is atomic: together they stop at exactly `study_trials`. A server URL has no such lock; two workers asking in
the same instant near the end may add one trial more.
"""

from __future__ import annotations

import contextlib
import sqlite3
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import make_url

JOURNAL = "journal:"
# seconds a SQLite writer waits for another worker's transaction before giving up
SQLITE_TIMEOUT_S = 120


def storage_file(url: str) -> Path | None:
    """The file a storage URL keeps its study in; None for a server or an in-memory database."""
    if url.startswith(JOURNAL):
        return Path(url.removeprefix(JOURNAL))
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database)
    return None


def open_storage(url: str) -> BaseStorage:
    """The storage behind `url`, its folder made, ready for concurrent workers."""
    path = storage_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith(JOURNAL):
        return JournalStorage(JournalFileBackend(str(path)))
    if path is not None:
        # one worker at a time: WAL (a property of the file, kept by every later connection) needs the file to
        # itself, and two workers creating Optuna's tables at once collide on their schema version
        with ask_lock(url):
            with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S)) as db:
                db.execute("PRAGMA journal_mode=WAL")
            return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}})
    return RDBStorage(url)


def ask_lock(url: str | None) -> AbstractContextManager:
    """A lock that every worker of a file storage shares; a no-op for a server or an in-memory study."""
    path = storage_file(url) if url else None
    # not `<file>.lock`: Optuna's journal takes that name for its own lock
    return FileLock(f"{path}.ask.lock") if path is not None else contextlib.nullcontext()


def describe(url: str | None) -> str:
    """The storage URL for logs and files, its password hidden."""
    if not url:
        return "memory"
    return url if url.startswith(JOURNAL) else make_url(url).render_as_string(hide_password=True)


def load_study(url: str, study_name: str, **kwargs: Any) -> optuna.Study:
    return optuna.load_study(study_name=study_name, storage=open_storage(url), **kwargs)
