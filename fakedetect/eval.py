"""`python -m fakedetect.eval ckpt_path=...`: test a checkpoint on its own data (or another) and write metrics."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from fakedetect.utils.builders import build_list, build_model, build_trainer
from fakedetect.utils.checkpoint import checkpoint_config, load_checkpoint
from fakedetect.utils.records import machine, print_config, scalars, write_metrics

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if cfg.get("print_config"):
        print_config(cfg)
    run_cfg = checkpoint_config(load_checkpoint(cfg.ckpt_path), cfg.ckpt_path)
    for key, value in cfg.get("data", {}).items():
        if value is not None:
            run_cfg.data[key] = value
    datamodule = instantiate(run_cfg.data)
    model = build_model(run_cfg)
    trainer = build_trainer(cfg, callbacks=[], loggers=build_list(cfg.get("logger")))
    trainer.test(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    metrics = scalars(trainer.callback_metrics)
    if trainer.is_global_zero:
        write_metrics(
            Path(cfg.paths.output_dir) / "metrics.json",
            {"task": "eval", "ckpt_path": str(cfg.ckpt_path), "data_root": run_cfg.data.root,
             "machine": machine(), "metrics": metrics},
        )
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
