"""`python -m fakedetect.download cifake [dest=PATH]`: fetch CIFAKE (fakedetect/tools/download.py);
`python -m fakedetect.download sample sample.source=FULL_CIFAKE` rebuilds the sample shipped in the package."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from fakedetect.tools.download import build_sample, fetch_cifake
from fakedetect.utils.app import command
from fakedetect.utils.errors import ConfigError


@command("download")
def download(cfg: DictConfig) -> None:
    if cfg.dataset == "cifake":
        fetch_cifake(Path(cfg.dest), cfg.get("url"), cfg.get("sha256"), cfg.get("kaggle"), cfg.timeout)
    elif cfg.dataset == "sample":
        build_sample(
            cfg.sample.source,
            Path(cfg.sample.dest),
            cfg.sample.train_per_class,
            cfg.sample.test_per_class,
            tuple(cfg.sample.classes),
            cfg.sample.seed,
        )
    else:
        raise ConfigError(f"unknown dataset '{cfg.dataset}': python -m fakedetect.download cifake (or sample)")


def dataset_word(argv: list[str]) -> list[str]:
    """`download cifake ...` reads as `download dataset=cifake ...`: Hydra takes key=value arguments only."""
    if len(argv) > 1 and "=" not in argv[1] and not argv[1].startswith("-"):
        return [argv[0], f"dataset={argv[1]}", *argv[2:]]
    return argv


def main() -> None:
    sys.argv = dataset_word(sys.argv)
    download()


if __name__ == "__main__":
    main()
