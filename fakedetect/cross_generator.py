"""`python -m fakedetect.cross_generator runs=DIR [metric=auroc]`: GenImage's table of a cross_generator
multirun, from its runs' own files (fakedetect/reporting/cross_generator.py)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from fakedetect.reporting.cross_generator import write_table
from fakedetect.utils.app import command


@command("cross_generator")
def main(cfg: DictConfig) -> None:
    runs = Path(cfg.runs)
    print(write_table(runs, Path(cfg.out) if cfg.out else runs, cfg.metric))


if __name__ == "__main__":
    main()
