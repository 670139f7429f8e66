"""`python -m fakedetect.results [readme=README.md]`: the README's results table, from the runs' own files
(fakedetect/reporting/results.py)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from fakedetect.reporting.results import collect, table, update_readme
from fakedetect.utils.app import command


@command("results")
def main(cfg: DictConfig) -> None:
    text = table(collect(Path(cfg.outputs), cfg.min_train))
    if cfg.readme:
        update_readme(Path(cfg.readme), text)
    print(text)


if __name__ == "__main__":
    main()
