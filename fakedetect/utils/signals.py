"""How every command stops on SIGINT (Ctrl-C), SIGTERM and SIGHUP: cleanly, saying what it was doing.

Python's default for SIGTERM and SIGHUP ends the process on the spot: no `finally` runs, so worker processes are
orphaned and temporary files stay. Here the first of these signals raises `Stopped` in the main thread instead,
as Ctrl-C raises KeyboardInterrupt, so the command unwinds through its `finally` blocks and context managers (the
decode cache's private folder is removed, pools and DataLoader workers are shut down, child commands stopped);
then `stop_on_signals` ends any child process still alive, prints one line and exits 128 + the signal's number
(130, 143, 129), as shells do for a process ended by a signal.

    stopped by SIGTERM while writing the decode cache data/cache/cifake-32px-...; nothing partial was kept

The line names the innermost `doing(...)` block the signal arrived in and every enclosing block's outcome.

`Stopped` is a BaseException and not a KeyboardInterrupt: `except Exception` handlers (Hydra's job runner, the
sweeper, `one_line_errors`) let it through to the command's top, and Lightning, which turns a KeyboardInterrupt
during fit into `sys.exit(1)` (losing the signal and what was stopped), treats any other BaseException by
tearing the trainer down (its DataLoader workers included) and raising it again. Lightning's own SIGTERM handler
(`_SignalConnector`) stays in charge while a trainer runs: it calls the handler installed before it, so a SIGTERM
first reaches Lightning's (which ends the processes of its DDP launcher), then this one.

A second signal while stopping is ignored, so that Ctrl-C twice does not cut short the cleanup that removes
partial files (SIGKILL still ends the process at once; its workers then end with it, see `processes.py`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType

from fakedetect.utils.processes import end_children

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

Text = str | Callable[[], str]


@dataclass
class Activity:
    """What a command is doing (`what`) and what is true of its files if it is stopped there (`outcome`, read
    after the cleanup); either may be a function, called when needed, for a state that changes (an epoch)."""

    what: Text
    outcome: Text = ""


def _text(value: Text) -> str:
    try:
        return value() if callable(value) else value
    except Exception as err:  # noqa: BLE001 - a description must never stand in the way of stopping
        return f"(not described: {type(err).__name__})"


class Stopped(BaseException):
    """Raised by the first stop signal, in the main thread; carries the activities it interrupted."""

    def __init__(self, signum: int, activities: list[Activity]) -> None:
        self.signum, self.activities = signum, activities
        # what was going on, read now, before the unwinding changes it
        self.what = _text(activities[-1].what) if activities else "starting"
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def line(self) -> str:
        """`stopped by SIGTERM while <innermost activity>; <outcomes, innermost first>`."""
        outcomes = [o for o in (_text(a.outcome) for a in reversed(self.activities)) if o]
        return "; ".join([f"stopped by {signal.Signals(self.signum).name} while {self.what}", *outcomes])


_activities: list[Activity] = []
# the process whose handlers these are: a worker forked from it inherits them and must not raise Stopped
_owner: int | None = None
_stopping: Stopped | None = None


@contextlib.contextmanager
def doing(what: Text, outcome: Text = "") -> Iterator[None]:
    """Name what the code inside the block does (and what a stop there leaves), for the line a signal prints."""
    activity = Activity(what, outcome)
    _activities.append(activity)
    try:
        yield
    finally:
        _activities.remove(activity)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _stopping
    if os.getpid() != _owner:
        # a worker forked from the command (DataLoader, decode pool): it leaves Ctrl-C (sent to the whole process
        # group) to the command, which ends it, and dies of any other signal as it would without this handler
        if signum != signal.SIGINT:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        return
    if _stopping is not None:
        print(f"{signal.Signals(signum).name} ignored: already stopping, cleaning up", file=sys.stderr, flush=True)
        return
    # what was going on is read now, while the blocks are open; the outcomes later, once cleaned up
    _stopping = Stopped(signum, list(_activities))
    raise _stopping


def stop_on_signals(main: Callable[[], None]) -> Callable[[], None]:
    """Run a command's `main` with the stop signals raising `Stopped`; on a stop, end its children, print one line
    and exit with 128 + the signal number."""

    @functools.wraps(main)
    def stoppable() -> None:
        global _owner, _stopping
        previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        _owner, _stopping = os.getpid(), None
        for s in STOP_SIGNALS:
            signal.signal(s, _on_signal)
        try:
            main()
        except Stopped as stop:
            # torch's SIGCHLD handler would raise in this process for DataLoader workers ended now
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            end_children()
            print(stop.line(), file=sys.stderr, flush=True)
            _exit_now(stop.exit_code)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    return stoppable


def _exit_now(code: int) -> None:
    """Exit with `code` once the logs are flushed, skipping the interpreter's teardown: the libraries that Lightning
    imports keep a native thread that holds it for seconds (`python -c "import lightning"` ends 2-5 s after its
    last line on a loaded machine), and a stopped command has already cleaned up and ended its children. Not
    flushed: what a TensorBoard writer still buffers (Lightning does not finalize loggers on an interruption)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
