"""Child processes that never outlive the command that started them.

Three layers, from the orderly to the last resort:

- on a stop (`signals.py`), the unwinding shuts pools down without waiting for their queued work
  (`worker_pool`) and gives child commands SIGTERM and time to clean up (`run_child`); then `end_children` ends
  every descendant still alive;
- a pool worker dies with its parent even when the parent gets no chance to clean up (SIGKILL, the OOM killer):
  `exit_with_parent` runs in each worker;
- DataLoader workers are torch's: Lightning's teardown shuts them down, and torch's own watchdog in each worker
  ends it within 5 s (MP_STATUS_CHECK_INTERVAL) once its parent is gone. fakedetect sets no `worker_init_fn`,
  since one would replace the seeding function that Lightning adds (`seed_everything(workers=True)`).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import psutil

# seconds a child gets between SIGTERM and SIGKILL: enough to remove its temporary files and end its own workers
GRACE_S = 3.0
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def exit_with_parent() -> None:
    """Make this worker process end when its parent dies, however the parent dies.

    On Linux the kernel sends it SIGKILL (prctl's PR_SET_PDEATHSIG): immediate, and it reaches a worker busy in C
    code (a decoder). A forkserver or spawn worker's parent is the forkserver, which exits when the command does,
    so the chain holds. Elsewhere a daemon thread polls the parent's pid. multiprocessing's parent sentinel (a
    pipe that closes) is not used: with fork, each later sibling inherits the write end of the earlier workers'
    pipes, so one pipe closes only when all of them are gone. Ctrl-C reaches the whole process group; a worker
    leaves it to its parent, which ends the pool.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)  # a forked worker inherits its parent's Python handlers
    parent = multiprocessing.parent_process()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if parent is not None and not parent.is_alive():  # it died before prctl
            os._exit(1)
        return
    ppid = os.getppid()

    def watch() -> None:
        while os.getppid() == ppid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool whose workers die with this process, and which, when the block raises (a stop, an error),
    drops its queued work instead of finishing it as `with ProcessPoolExecutor()` does."""
    pool = ProcessPoolExecutor(workers, initializer=exit_with_parent)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def end(process: subprocess.Popen | psutil.Process, grace: float = GRACE_S) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds: a fakedetect command stops cleanly in between."""
    with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
        process.terminate()
        try:
            process.wait(grace)
        except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
            process.kill()
            process.wait()


def run_child(command: Sequence[str], timeout: float | None = None, **popen: Any) -> int:
    """`subprocess.run(command, timeout=...).returncode`, except that a child left behind by a timeout or a stop
    of this command gets SIGTERM and GRACE_S seconds to clean up before SIGKILL (subprocess.run kills at once,
    leaving the child's temporary files and, for GRACE_S, its workers)."""
    with subprocess.Popen(command, **popen) as child:
        try:
            return child.wait(timeout)
        except BaseException:
            end(child)
            raise


def end_children(grace: float = GRACE_S) -> None:
    """End every descendant of this process still alive: SIGTERM, then SIGKILL for those left after `grace`."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=grace)
