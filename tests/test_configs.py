"""Every config group option and every experiment composes, and the nets and modules they name build."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from fakedetect.modules import Detector
from fakedetect.utils.builders import build_list, build_model, resolve_precision
from tests.conftest import CONF, compose_config


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    ("group", "option"),
    [(g, o) for g in ("data", "model", "loss", "trainer", "logger", "callbacks", "paths", "hydra", "debug")
     for o in options(g)],
)
def test_group_option_composes(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"{group}={option}", "data.root=x"], tmp_path)
    assert cfg.model._target_ and cfg.data._target_ and cfg.trainer._target_


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiment_builds_its_model(experiment: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"experiment={experiment}", "data.root=x"], tmp_path)
    assert experiment in cfg.tags
    model = build_model(cfg)
    assert isinstance(model, Detector)
    assert sum(p.numel() for p in model.parameters()) > 1000


def test_fakefinder_best_matches_the_write_up(tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=fakefinder_best", "data.root=x"], tmp_path)
    net = cfg.model.net
    assert (net.n_layers, list(net.filters), list(net.kernel_sizes)) == (2, [32, 24], [5, 3])
    assert (net.dropout, net.fc_size, cfg.model.optimizer.lr) == (0.17, 384, 7.32e-4)
    assert (cfg.data.resolution, cfg.data.batch_size, net.resolution) == (16, 16, 16)


@pytest.mark.parametrize("logger", ["tensorboard", "csv", "many"])
def test_loggers_and_callbacks_instantiate(logger: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"logger={logger}", "data.root=x"], tmp_path)
    assert len(build_list(cfg.logger)) == (2 if logger == "many" else 1)
    callbacks = build_list(cfg.callbacks)
    checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    assert len(callbacks) == 5 and [c.monitor for c in checkpoints] == ["val/acc", None], "best, then latest"


@pytest.mark.parametrize(
    ("overrides", "accelerator", "precision"),
    [
        (["trainer=cpu"], "cpu", "32-true"),
        (["trainer=gpu"], "gpu", "bf16-mixed"),
        (["trainer.accelerator=gpu"], "gpu", None),
        (["model=mlp", "trainer=gpu"], "gpu", "bf16-mixed"),
        (["trainer=ddp"], "gpu", "bf16-mixed"),
        (["trainer=ddp_sim"], "cpu", "32-true"),
    ],
)
def test_trainer_choices(overrides: list[str], accelerator: str, precision: str | None, tmp_path: Path) -> None:
    cfg = compose_config("train", [*overrides, "data.root=x"], tmp_path)
    assert cfg.trainer.accelerator == accelerator
    if precision:
        assert resolve_precision(cfg.trainer) == precision


def test_precision_auto_on_cpu() -> None:
    assert resolve_precision(DictConfig({"accelerator": "cpu", "precision": "auto"})) == "32-true"


def test_ddp_sim_trainer_instantiates(tmp_path: Path) -> None:
    cfg = compose_config("train", ["trainer=ddp_sim", "data.root=x"], tmp_path)
    trainer = instantiate(cfg.trainer, precision=resolve_precision(cfg.trainer), logger=False)
    assert trainer.num_devices == 2


def test_eval_config_composes(tmp_path: Path) -> None:
    cfg = compose_config("eval", ["ckpt_path=some.ckpt", "data.root=other"], tmp_path)
    assert cfg.ckpt_path == "some.ckpt" and cfg.data.root == "other"


def test_slurm_launcher_composes(tmp_path: Path) -> None:
    compose_config("train", ["hydra/launcher=slurm", "trainer=ddp", "data.root=x"], tmp_path)
    launcher = HydraConfig.get().launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == 1 and launcher.timeout_min == 240
