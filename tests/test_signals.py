"""Stop signals and run folders, with real commands, real signals and real processes (issue 21, classes 3 and 4).

A command started here gets a session of its own, so its process group holds it and every worker it starts; the
tests look at that group (psutil) after the signal. A zombie (a dead worker its new parent has not reaped yet)
counts as gone: it holds no memory and runs nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from hydra.types import RunMode
from omegaconf import OmegaConf

from fakedetect.data.cache import PRIVATE
from fakedetect.utils.locks import LOCK_FILE, FolderInUse, HoldRunFolder, private_folder, remove_abandoned
from tests.conftest import QUIET, ROOT, metrics_json

# a training on the packaged sample that runs long enough to be signalled mid-way
SAMPLE_TRAIN = ["data=cifake_sample", "trainer=cpu", *QUIET]


def start(args: list[str], log: Path, cwd: Path = ROOT) -> subprocess.Popen:
    """`python <args>` in a session (and process group) of its own, its output in `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def live_group(pgid: int) -> list[psutil.Process]:
    """The processes of process group `pgid` still running (zombies excluded)."""
    found = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def wait_for(condition: Callable[[], object], seconds: float, what: str) -> None:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"{what} not seen within {seconds} s")
        time.sleep(0.05)


def stop(command: subprocess.Popen, signum: int, *, group: bool = False) -> float:
    """Send `signum` (to the whole group, as a terminal's Ctrl-C does, with `group`); then wait until no process
    of the group is left, and return how long that took."""
    sent = time.monotonic()
    if group:
        os.killpg(command.pid, signum)
    else:
        command.send_signal(signum)
    command.wait(30)
    while live_group(command.pid) and time.monotonic() - sent < 30:
        time.sleep(0.05)
    return time.monotonic() - sent


def last_line(log: Path) -> str:
    return log.read_text().strip().splitlines()[-1]


def test_sigterm_while_caching_ends_every_worker_and_keeps_no_partial_cache(cifake_path: Path, tmp_path: Path) -> None:
    """The issue's case: SIGTERM to train while its decode pool writes a cold cache (the whole CIFAKE train split,
    so that caching lasts on any machine). Before, the parent died with 143 and left its two decode workers
    (620 MB each) blocked for ever."""
    cache, log = tmp_path / "cache", tmp_path / "train.log"
    train = start(
        [
            "-m",
            "fakedetect.train",
            f"data.root={cifake_path}",
            f"data.cache_dir={cache}",
            "data.decode_workers=2",
            *QUIET,
            "trainer=cpu",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        log,
    )
    wait_for(lambda: list(cache.glob(PRIVATE)), 240, "the decode cache's private folder")
    wait_for(lambda: len(live_group(train.pid)) >= 3, 30, "the two decode workers")
    took = stop(train, signal.SIGTERM)
    assert train.returncode == 143, log.read_text()[-2000:]
    assert not live_group(train.pid), "processes left after SIGTERM"
    assert took < 5, f"the command and its workers took {took:.1f} s to end"
    assert not list(cache.iterdir()), "a partial cache was kept"
    line = last_line(log)
    assert line.startswith(f"stopped by SIGTERM while writing the decode cache {cache}/"), line
    assert "nothing partial was kept" in line
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize("presses", [1, pytest.param(2, marks=pytest.mark.slow)], ids=["ctrl-c", "ctrl-c-twice"])
def test_ctrl_c_during_training_steps_stops_in_one_line_and_keeps_last_ckpt(tmp_path: Path, presses: int) -> None:
    """Ctrl-C (SIGINT to the whole process group, DataLoader workers included) while training steps run: exit 130,
    no process left, one line saying the epoch and step and the checkpoint to resume from; a second Ctrl-C while
    stopping does not cut the cleanup short."""
    run, log = tmp_path / "run", tmp_path / "train.log"
    train = start(
        [
            "-m",
            "fakedetect.train",
            *SAMPLE_TRAIN,
            "data.loader=cached",
            "data.num_workers=2",
            "trainer.max_epochs=100",
            f"hydra.run.dir={run}",
        ],
        log,
    )
    last = run / "checkpoints" / "last.ckpt"
    wait_for(last.exists, 240, "last.ckpt")
    wait_for(lambda: len(live_group(train.pid)) >= 3, 30, "the DataLoader workers")
    if presses == 2:
        os.killpg(train.pid, signal.SIGINT)
        time.sleep(0.05)
    took = stop(train, signal.SIGINT, group=True)
    assert train.returncode == 130, log.read_text()[-2000:]
    assert took < 5 and not live_group(train.pid), f"{took:.1f} s, left: {live_group(train.pid)}"
    line = last_line(log)
    assert line.startswith("stopped by SIGINT while training (epoch "), line
    assert f"in {run}" in line and f"ckpt_path={last}" in line, line
    text = log.read_text()
    assert "Traceback" not in text and "Detected KeyboardInterrupt" not in text
    assert ("SIGINT ignored: already stopping" in text) == (presses == 2)
    assert not (run / "metrics.json").exists()


def test_a_killed_processs_pool_workers_die_with_it(tmp_path: Path) -> None:
    """SIGKILL leaves no time to clean up: the decode pool's workers end by themselves (PR_SET_PDEATHSIG)."""
    log = tmp_path / "pool.log"
    script = (
        "import time, psutil\n"
        "from fakedetect.utils.processes import worker_pool\n"
        "with worker_pool(2) as pool:\n"
        "    [pool.submit(time.sleep, 120) for _ in range(4)]\n"
        "    time.sleep(120)\n"
    )
    parent = start(["-c", script], log)
    wait_for(lambda: len(live_group(parent.pid)) == 3, 60, "two pool workers")
    took = stop(parent, signal.SIGKILL)
    assert not live_group(parent.pid) and took < 5, f"{took:.1f} s, left: {live_group(parent.pid)}"


def test_private_folders_of_dead_writers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    """What a killed cache writer leaves (`.<cache>.tmp-*`) is removed by the next writer; a live writer's is not."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from fakedetect.utils.locks import private_folder\n"
        "folder, fd = private_folder(Path(sys.argv[1]), '.cifake-32px')\n"
        "(folder / 'rows.npy').write_bytes(b'partial')\n"
        "print(folder, flush=True)\n"
        "time.sleep(120)\n"
    )
    writer = start(["-c", script, str(tmp_path)], tmp_path / "writer.log")
    wait_for(lambda: list(tmp_path.glob(PRIVATE)), 60, "the writer's folder")
    remove_abandoned(tmp_path, PRIVATE)
    assert list(tmp_path.glob(PRIVATE)), "a live writer's folder was removed"
    stop(writer, signal.SIGKILL)
    mine, fd = private_folder(tmp_path, ".other-64px")
    try:
        remove_abandoned(tmp_path, PRIVATE)
        assert list(tmp_path.glob(PRIVATE)) == [mine]
    finally:
        os.close(fd)


def test_two_runs_in_one_folder_the_second_is_refused_in_one_line(tmp_path: Path) -> None:
    """Two trainings given the same hydra.run.dir: the second stops at once, naming the folder and the first
    (its pid and command); the first finishes with its own config, checkpoints and metrics.json."""
    run = tmp_path / "run"
    first = start(
        ["-m", "fakedetect.train", *SAMPLE_TRAIN, "trainer.max_epochs=2", "test=false", f"hydra.run.dir={run}"],
        tmp_path / "1.log",
    )
    wait_for(lambda: (run / LOCK_FILE).exists() and (run / LOCK_FILE).read_text(), 120, "the first run's lock")
    second = subprocess.run(
        [sys.executable, "-m", "fakedetect.train", *SAMPLE_TRAIN, "trainer.max_epochs=1", f"hydra.run.dir={run}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 1, second.stderr
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: run folder (hydra.run.dir) {run} is in use by a live run (pid {first.pid} "), line
    assert "trainer.max_epochs=2" in line and "Traceback" not in second.stderr
    assert first.wait(300) == 0, (tmp_path / "1.log").read_text()[-2000:]
    assert "trainer.max_epochs=2" in (run / ".hydra" / "overrides.yaml").read_text()
    record = metrics_json(run)
    assert record["epochs"] == 2 and Path(record["ckpt_path"]).is_file()
    assert len(list((run / "tensorboard").rglob("events.out.tfevents.*"))) >= 1


@pytest.mark.slow
def test_a_folder_left_by_a_killed_run_is_free_and_resumes(tmp_path: Path) -> None:
    """The lock of a SIGKILLed run dies with it: a training resumed in the same folder from its last.ckpt runs."""
    run = tmp_path / "run"
    killed = start(
        ["-m", "fakedetect.train", *SAMPLE_TRAIN, "trainer.max_epochs=100", f"hydra.run.dir={run}"], tmp_path / "1.log"
    )
    last = run / "checkpoints" / "last.ckpt"
    wait_for(last.exists, 240, "last.ckpt")
    stop(killed, signal.SIGKILL)
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "fakedetect.train",
            *SAMPLE_TRAIN,
            "trainer.max_epochs=2",
            f"ckpt_path={last}",
            f"hydra.run.dir={run}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "test/acc" in metrics_json(run)["metrics"]


def test_a_sweep_folder_and_each_of_its_job_folders_are_held(tmp_path: Path) -> None:
    """A multirun holds hydra.sweep.dir (a second sweep there is refused, naming the live holder) and each job its
    own folder; once the holder is killed, the folder is free."""
    sweep = tmp_path / "sweep"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from fakedetect.utils.locks import hold_folder\n"
        "hold_folder(Path(sys.argv[1]), 'sweep folder')\n"
        "time.sleep(120)\n"
    )
    holder = start(["-c", script, str(sweep)], tmp_path / "holder.log")
    wait_for(lambda: (sweep / LOCK_FILE).exists() and (sweep / LOCK_FILE).read_text(), 60, "the holder's lock")
    cfg = OmegaConf.create(
        {"hydra": {"mode": RunMode.MULTIRUN, "sweep": {"dir": str(sweep)}, "runtime": {"output_dir": str(sweep / "3")}}}
    )
    with pytest.raises(FolderInUse) as refused:
        HoldRunFolder().on_multirun_start(cfg)
    assert str(refused.value).startswith(f"error: sweep folder (hydra.sweep.dir) {sweep} is in use by a live run")
    assert f"pid {holder.pid} " in str(refused.value)
    stop(holder, signal.SIGKILL)
    sweeper = HoldRunFolder()
    sweeper.on_multirun_start(cfg)
    sweeper.on_job_start(cfg, task_function=print)
    taken = subprocess.run([sys.executable, "-c", script, str(sweep / "3")], capture_output=True, text=True, timeout=60)
    assert taken.returncode == 1
    assert f"{sweep / '3'} is in use by a live run (pid {os.getpid()} " in taken.stderr.strip().splitlines()[-1]
    sweeper.on_job_end(cfg, job_return=None)  # type: ignore[arg-type]
    sweeper.on_multirun_end(cfg)
