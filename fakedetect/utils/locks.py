"""Folders owned by a live process: a run folder, a decode cache being written.

Ownership is an OS lock, `fcntl.flock` on an open file or folder, which the kernel releases when the owning
process dies, however it dies. A PID file would outlive a killed owner and need a guess at whether its PID is
still the same process (PIDs are reused; another host's PID means nothing here), so a killed run would block its
folder or a live one be taken for dead. A flock is shared by the processes forked while it is held (DataLoader
and pool workers), so a folder stays owned until the last of them is gone. Not across hosts on file systems
whose flock is local (some NFS setups): two hosts sharing a folder are not told apart.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode, TaskFunction
from omegaconf import DictConfig, OmegaConf

LOCK_FILE = ".run.lock"


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class FolderInUse(SystemExit):
    """The one line that refuses a folder another live process owns (a SystemExit: Hydra's callbacks turn an
    Exception into a warning and go on)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")


def hold_folder(folder: Path, what: str) -> int:
    """Own `folder` (created if need be) until the returned descriptor is closed or this process ends, recording
    who owns it in its lock file; FolderInUse when another live process owns it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if not _try_flock(fd):
        with os.fdopen(fd) as f:
            holder = f.read().strip() or "a process that has not written its name yet"
        raise FolderInUse(f"{what} {folder} is in use by a live run ({holder}); give another folder or wait for it")
    note = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: {command_line()}"
    os.ftruncate(fd, 0)
    os.pwrite(fd, note.encode(), 0)
    return fd


def command_line() -> str:
    """This process's command as typed (`python -m fakedetect.train ...` or the console script's)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None else sys.argv[:1]
    return shlex.join([*head, *sys.argv[1:]])


def private_folder(parent: Path, stem: str) -> tuple[Path, int]:
    """A new folder `parent/<stem>.tmp-<random>` owned by this process until the returned descriptor is closed
    (see `remove_abandoned`). It is made under another name and renamed once locked, so that another process's
    `remove_abandoned` never finds it unlocked between its creation and its lock."""
    staging = Path(tempfile.mkdtemp(prefix=f"{stem}.new-", dir=parent))
    fd = os.open(staging, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    folder = staging.with_name(staging.name.replace(f"{stem}.new-", f"{stem}.tmp-", 1))
    os.rename(staging, folder)
    return folder, fd


@contextlib.contextmanager
def scratch_folder(parent: Path, stem: str) -> Iterator[Path]:
    """A private folder (`private_folder`) for the block, removed when it ends."""
    folder, fd = private_folder(parent, stem)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def remove_abandoned(parent: Path, pattern: str) -> None:
    """Remove the folders in `parent` matching `pattern` that `private_folder` made for a process now dead (a
    killed writer's leftovers); those of live writers stay."""
    for folder in parent.glob(pattern):
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:  # gone meanwhile, or not a folder of ours
            continue
        try:
            if _try_flock(fd):
                shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)


def _is_rank_zero() -> bool:
    """Whether this is the first (or only) process of a run: Lightning's DDP launcher and SLURM start the other
    ranks as copies of the command, in the same run folder, with their rank in these variables."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


class HoldRunFolder(Callback):
    """Hydra callback (conf/hydra/default.yaml): a run owns `hydra.run.dir`, a multirun `hydra.sweep.dir` (its
    jobs' folders are inside it), from before Hydra writes anything there until the end.

    A second run given the same folder while the first is alive stops in one line naming the folder and the
    holder; a folder left by a killed run is free (resuming there with `ckpt_path=.../last.ckpt` works). Search
    workers sharing one study each have their own sweep folder, as two sweeps in one folder would number their
    jobs alike and overwrite each other's. Folders inside a held one are not checked: the sweeper's test of the
    best trial and the bench's trainings run as child commands in folders of their parent's.
    """

    def __init__(self) -> None:
        self.fd: int | None = None
        self.job_fd: int | None = None

    def _hold(self, config: DictConfig, key: str, what: str) -> None:
        if _is_rank_zero():
            self.fd = hold_folder(Path(OmegaConf.select(config, key)).absolute(), f"{what} ({key})")

    def _release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # the folder's interpolations (paths.root_dir is `${hydra:runtime.cwd}`) read HydraConfig, which Hydra sets
        # before a multirun's callbacks but only at a run's job: set as Hydra's multirun does (`now` is cached, so
        # the job resolves the same folder)
        HydraConfig.instance().set_config(config)
        OmegaConf.set_readonly(config.hydra, None)
        self._hold(config, "hydra.run.dir", "run folder")

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._release()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._hold(config, "hydra.sweep.dir", "sweep folder")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._release()

    def on_job_start(self, config: DictConfig, *, task_function: TaskFunction, **kwargs: Any) -> None:
        # a multirun's job holds its own folder too (a run given hydra.run.dir=<sweep>/3 is refused while job 3
        # runs), after Hydra has written its .hydra/ there; a run's job is the run, whose folder is held already
        if config.hydra.mode == RunMode.MULTIRUN and _is_rank_zero():
            self.job_fd = hold_folder(Path(config.hydra.runtime.output_dir), "job folder")

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if self.job_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.job_fd)
            self.job_fd = None
