"""A background thread that samples something at a fixed interval while a block of code runs."""

from __future__ import annotations

import threading
from typing import TypeVar

S = TypeVar("S", bound="Sampler")


class Sampler:
    """`with SubClass() as s:` calls `s.sample()` every `interval` s in a thread until the block ends; `sample`
    returns False to stop early (a reading that cannot be taken)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> bool:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set() and self.sample() is not False:
            self._stop.wait(self.interval)

    def __enter__(self: S) -> S:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
