"""`python -m fakedetect.search_report storage=URL study=NAME [out=DIR]`: tables, plots and a TensorBoard view of a
stored Optuna study (fakedetect/search/report.py)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from fakedetect.search.report import write_report
from fakedetect.search.storage import check_storage, load_study
from fakedetect.utils.app import command


@command("search_report")
def main(cfg: DictConfig) -> None:
    check_storage(cfg.storage, "storage")
    study = load_study(cfg.storage, cfg.study)
    write_report(study, Path(cfg.out) if cfg.out else Path("outputs/optuna") / f"{cfg.study}_report", cfg.top_k)


if __name__ == "__main__":
    main()
