"""Every config group option, experiment, search and command config composes, and the nets and modules they name
build; the shared groups (model/optimizer, model/scheduler, data/augment, paths) give the keys the recipes always
had."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from fakedetect.modules import Detector
from fakedetect.reporting.robustness import parse_condition
from fakedetect.utils.builders import build_list, build_model, resolve_precision
from tests.conftest import CONF, ROOT, WEIGHTS_DIR, compose_config

ONE_CYCLE = {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "_partial_": True, "pct_start": 0.2}
# groups of other commands' configs: suite (bench's); and bases included by a group's options (model/common, ...)
NOT_TRAIN_GROUPS = {"experiment", "suite", "common"}
# eval's and gradcam's data: the checkpoint's, with replacements
NOT_TRAIN_OPTIONS = {("data", "from_checkpoint")}
# every command's primary config that knows this machine's paths
COMMANDS = sorted(p.stem for p in CONF.glob("*.yaml") if "- paths: default" in p.read_text())


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def train_groups() -> list[str]:
    """Every group, nested ones (model/optimizer) included, by its path under conf/."""
    groups = (d.relative_to(CONF).as_posix() for d in CONF.rglob("*") if d.is_dir())
    return sorted(g for g in groups if NOT_TRAIN_GROUPS.isdisjoint(g.split("/")) and options(g))


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in train_groups() for o in options(g) if (g, o) not in NOT_TRAIN_OPTIONS]
)
def test_group_option_composes(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"{group}={option}", "data.root=x"], tmp_path)
    assert cfg.model._target_ and cfg.data._target_ and cfg.trainer._target_
    assert cfg.model.optimizer._target_ and cfg.model.scheduler_interval and cfg.data.augment._target_


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_with_paths_composes_and_reads_the_local_config(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FAKEDETECT_WEIGHTS", raising=False)
    assert Path(compose_config(name, [], tmp_path).paths.weights_dir).name == "weights"
    local = compose_config(name, ["local=example"], tmp_path)
    assert (local.paths.shared_dir, local.paths.weights_dir) == ("/data/shared", "/data/shared/weights")


@pytest.mark.parametrize(
    ("overrides", "optimizer", "scheduler", "interval", "augment"),
    [
        ([], {"_target_": "torch.optim.Adam", "lr": 1e-3, "weight_decay": 0.0}, None, "epoch", (True, 2)),
        (
            ["model/optimizer=sgd", "model/scheduler=onecycle", "data/augment=none"],
            {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
            {**ONE_CYCLE, "max_lr": 0.1},
            "step",
            (False, 0),
        ),
        (
            ["experiment=cnnv3"],
            {"_target_": "torch.optim.Adam", "lr": 2e-3, "weight_decay": 0.0},
            {**ONE_CYCLE, "max_lr": 2e-3},
            "step",
            (True, 4),
        ),
        (
            ["experiment=resnet18_fast"],
            {"_target_": "torch.optim.SGD", "lr": 0.2, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
            {**ONE_CYCLE, "max_lr": 0.2, "pct_start": 0.25},
            "step",
            (True, 4),
        ),
        (
            ["experiment=cifake_top"],
            {"_target_": "torch.optim.AdamW", "lr": 2e-3, "weight_decay": 5e-2},
            {**ONE_CYCLE, "max_lr": 2e-3},
            "step",
            (True, 2),
        ),
        (
            ["experiment=ae_transfer_hybrid"],
            {"_target_": "torch.optim.Adam", "lr": 1e-3, "weight_decay": 0.0},
            {**ONE_CYCLE, "max_lr": 1e-3},
            "step",
            (True, 2),
        ),
        (
            ["experiment=fakefinder_best"],
            {"_target_": "torch.optim.Adam", "lr": 7.32e-4, "weight_decay": 0.0},
            None,
            "epoch",
            (False, 0),
        ),
        (
            ["experiment=resnet18_scratch"],
            {"_target_": "torch.optim.Adam", "lr": 5e-4, "weight_decay": 0.0},
            None,
            "epoch",
            (True, 0),
        ),
        (
            ["hparams_search=optuna"],
            {"_target_": "torch.optim.Adam", "lr": 1e-3, "weight_decay": 0.0},
            None,
            "epoch",
            (False, 0),
        ),
    ],
)
def test_group_choices_give_the_recipes_keys(
    overrides: list[str],
    optimizer: dict,
    scheduler: dict | None,
    interval: str,
    augment: tuple[bool, int],
    tmp_path: Path,
) -> None:
    """model/optimizer=, model/scheduler= and data/augment= (on the command line or an experiment's
    `override /...`) land at model.optimizer, model.scheduler, model.scheduler_interval and data.augment with the
    values the recipes had when each wrote its own block."""
    cfg = compose_config("train", [*overrides, "data.root=x"], tmp_path)
    assert OmegaConf.to_container(cfg.model.optimizer, resolve=True) == {**optimizer, "_partial_": True}
    assert OmegaConf.to_container(cfg.model, resolve=True)["scheduler"] == scheduler
    assert cfg.model.scheduler_interval == interval
    assert (cfg.data.augment.flip, cfg.data.augment.translate) == augment
    assert cfg.model.threshold == 0.5 and cfg.model.compile is False


def test_robust_recipes_keep_their_degradations(tmp_path: Path) -> None:
    blurjpeg = compose_config("train", ["experiment=cnnv3_blurjpeg", "data.root=x"], tmp_path).data.augment
    recipe = compose_config("train", ["experiment=cnnv3_robust", "data.root=x"], tmp_path)
    robust = recipe.data.augment
    assert (blurjpeg.blur_prob, blurjpeg.blur_sigma, blurjpeg.jpeg_prob, blurjpeg.resize_prob) == (0.5, 1.0, 0.5, 0.0)
    assert (robust.blur_prob, robust.blur_sigma, robust.jpeg_prob, robust.resize_prob) == (0.4, 1.5, 0.4, 0.4)
    assert robust.translate == blurjpeg.translate == 4 and list(robust.jpeg_quality) == [30, 100]
    assert (recipe.model.net.n_layers, list(recipe.model.net.filters)) == (3, [32, 64, 128])
    assert recipe.model.tta == "flip" and recipe.callbacks.ema.decay == 0.999


def test_machine_paths_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """One home for this machine's locations: paths.shared_dir / weights_dir, read from FAKEDETECT_SHARED /
    FAKEDETECT_WEIGHTS, feed every weights file the configs name; the tests' WEIGHTS_DIR reads the same."""
    effnet = compose_config("train", ["experiment=effnet_lite0_pretrained", "data.root=x"], tmp_path)
    assert Path(effnet.paths.weights_dir).resolve() == WEIGHTS_DIR.resolve()
    lpips = compose_config("train", ["model=ae_transfer", "data.root=x"], tmp_path).model.reconstruction
    monkeypatch.delenv("FAKEDETECT_SHARED", raising=False)
    monkeypatch.delenv("FAKEDETECT_WEIGHTS", raising=False)
    assert effnet.model.net.weights_path == f"{ROOT}/../shared/weights/tf_efficientnet_lite0_in1k.pth"
    monkeypatch.setenv("FAKEDETECT_SHARED", "/mnt/shared")
    assert effnet.model.net.weights_path == "/mnt/shared/weights/tf_efficientnet_lite0_in1k.pth"
    assert lpips.weights_path == "/mnt/shared/weights/alexnet_features_imagenet.pth"
    monkeypatch.setenv("FAKEDETECT_WEIGHTS", "/w")
    assert lpips.weights_path == "/w/alexnet_features_imagenet.pth"


def test_cifake_path_has_one_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """paths.cifake (the CIFAKE variable, else data/archive.zip) is where data=cifake reads, `download cifake`
    writes and `download sample` samples from; data=folder shares the data base, not CIFAKE's root."""
    monkeypatch.delenv("CIFAKE", raising=False)
    data = compose_config("train", [], tmp_path).data
    download = compose_config("download", [], tmp_path)
    assert data.root == download.dest == download.sample.source == f"{ROOT}/data/archive.zip"
    monkeypatch.setenv("CIFAKE", "/data/cifake.tar.gz")
    assert data.root == download.dest == download.sample.source == "/data/cifake.tar.gz"
    folder = compose_config("train", ["data=folder"], tmp_path).data
    assert OmegaConf.is_missing(folder, "root") and folder.max_pixels == data.max_pixels


def test_local_config_overrides_the_experiment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FAKEDETECT_WEIGHTS", raising=False)
    cfg = compose_config("train", ["experiment=effnet_lite0_pretrained", "local=example", "data.root=x"], tmp_path)
    assert cfg.model.net.weights_path == "/data/shared/weights/tf_efficientnet_lite0_in1k.pth"
    assert cfg.data.cache_dir == "/scratch/fakedetect-cache"


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
    assert len(callbacks) == 7 and [c.monitor for c in checkpoints] == ["val/acc", None], "best, then latest"


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


@pytest.mark.parametrize("name", ["eval", "gradcam"])
def test_checkpoint_commands_replace_its_data_settings(name: str, tmp_path: Path) -> None:
    cfg = compose_config(name, ["ckpt_path=some.ckpt", "data.root=other"], tmp_path)
    assert cfg.ckpt_path == "some.ckpt" and cfg.data.root == "other" and cfg.data.test_limit is None
    assert cfg.data.cache_dir == cfg.paths.cache_dir, "this machine's cache, never the checkpoint's"


def test_eval_robustness_conditions_parse(tmp_path: Path) -> None:
    """conf/eval.yaml holds the one list of default degradations; each is a condition robustness knows."""
    conditions = compose_config("eval", ["ckpt_path=x"], tmp_path).robustness.conditions
    assert conditions[0] == "clean" and all(parse_condition(c) for c in conditions)


def test_slurm_launcher_composes(tmp_path: Path) -> None:
    compose_config("train", ["hydra/launcher=slurm", "trainer=ddp", "data.root=x"], tmp_path)
    launcher = HydraConfig.get().launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == 1 and launcher.timeout_min == 240
