"""Real short trainings on a CIFAKE subset: train, checkpoint, eval, TensorBoard and the CLI entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from fakedetect.modules.checkpoint_format import FORMAT, FORMAT_KEY
from fakedetect.train import metric_value, train
from fakedetect.utils.checkpoint import checkpoint_config, load_checkpoint
from fakedetect.utils.errors import ConfigError
from tests.conftest import (
    QUIET,
    ROOT,
    SUBSET,
    compose_config,
    evaluate_run,
    event_tags,
    metrics_json,
    run_command,
    subset_train_config,
)


@pytest.mark.parametrize("model", ["cnn", "mlp"])
def test_fast_dev_run(model: str, train_cfg: Callable[..., DictConfig]) -> None:
    metrics = train(train_cfg(f"model={model}", "debug=fdr"))
    assert {"train/loss", "val/acc", "test/acc", "test/auroc"} <= set(metrics)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cifake_path: Path, cache_dir: Path) -> tuple[DictConfig, dict]:
    """The default CNN trained for 2 epochs on 2,000 CIFAKE images, tested on 1,000."""
    out = tmp_path_factory.mktemp("run")
    cfg = subset_train_config(cifake_path, cache_dir, out, "trainer.max_epochs=2")
    return cfg, train(cfg)


def test_short_training_learns(trained: tuple[DictConfig, dict]) -> None:
    _, metrics = trained
    assert metrics["val/acc_best"] > 0.7, metrics
    assert metrics["test/acc"] > 0.7, metrics
    assert metric_value(metrics, "val/acc_best") == metrics["val/acc_best"]


def test_metrics_json_records_the_run(trained: tuple[DictConfig, dict]) -> None:
    cfg, metrics = trained
    record = metrics_json(Path(cfg.paths.output_dir))
    assert record["metrics"]["test/acc"] == pytest.approx(metrics["test/acc"])
    assert record["epochs"] == 2 and record["params"] > 100_000 and record["train_time_s"] > 0
    assert "CPU" in record["machine"]


def test_checkpoint_is_self_contained(trained: tuple[DictConfig, dict]) -> None:
    cfg, _ = trained
    ckpt_path = metrics_json(Path(cfg.paths.output_dir))["ckpt_path"]
    ckpt = load_checkpoint(ckpt_path)
    run_cfg = checkpoint_config(ckpt, ckpt_path)
    assert run_cfg.model.net._target_ == "fakedetect.nets.FlexibleCNN"
    # the statistics once, as the detector's buffers; nothing of the data module
    assert ckpt[FORMAT_KEY] == FORMAT and "ImageDataModule" not in ckpt
    state = ckpt["state_dict"]
    assert len(state["data_mean"]) == 3 and all(0.2 < s < 0.35 for s in state["data_std"].tolist())


def test_eval_reproduces_the_test_metric(trained: tuple[DictConfig, dict], tmp_path: Path) -> None:
    cfg, metrics = trained
    result = evaluate_run(Path(cfg.paths.output_dir), tmp_path)
    assert result["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert result["test/auroc"] == pytest.approx(metrics["test/auroc"], abs=1e-6)
    assert metrics_json(tmp_path)["metrics"]["test/acc"] == result["test/acc"]


def test_tensorboard_has_scalars_hparams_and_figures(trained: tuple[DictConfig, dict]) -> None:
    cfg, _ = trained
    tags = {
        plugin: event_tags(Path(cfg.paths.output_dir) / "tensorboard", plugin)
        for plugin in ("scalars", "images", "hparams")
    }
    assert {"train/loss", "val/acc", "val/acc_best", "test/acc", "hp/test_acc"} <= tags["scalars"]
    assert {"test/confusion_matrix", "test/roc"} <= tags["images"]
    assert "_hparams_/session_start_info" in tags["hparams"]


def test_missing_optimized_metric_is_named() -> None:
    with pytest.raises(ConfigError, match="val/nope"):
        metric_value({"val/acc": 1.0}, "val/nope")


def test_cli_train_then_eval(cifake_path: Path, cache_dir: Path, tmp_path: Path) -> None:
    """The documented commands, as a user runs them: `python -m fakedetect.train` then `.eval`."""
    env = {**os.environ, "CIFAKE": str(cifake_path), "FAKEDETECT_CACHE": str(cache_dir)}
    run_dir = tmp_path / "run"
    run_command(
        "train",
        "experiment=fakefinder_best",
        *SUBSET,
        "trainer=cpu",
        "trainer.max_epochs=1",
        "callbacks.progress_bar=null",
        f"hydra.run.dir={run_dir}",
        env=env,
        check=True,
    )
    record = metrics_json(run_dir)
    assert record["experiment"] == "fakefinder_best" and record["metrics"]["test/acc"] > 0.6
    eval_dir = tmp_path / "eval"
    run_command(
        "eval", f"ckpt_path={record['ckpt_path']}", "trainer=cpu", f"hydra.run.dir={eval_dir}", env=env, check=True
    )
    evaluated = metrics_json(eval_dir)
    assert evaluated["metrics"]["test/acc"] == pytest.approx(record["metrics"]["test/acc"], abs=1e-6)


def test_last_checkpoint_follows_the_latest_epoch_and_a_killed_run_resumes_from_it(
    cifake_path: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """An MLP at lr 0 never improves on its first val/acc, so the best checkpoint stays at epoch 0; last.ckpt must
    still follow every epoch. Killed (SIGKILL) mid-training, the run resumes from it, not from scratch."""
    overrides = [
        f"data.root={cifake_path}",
        f"data.cache_dir={cache_dir}",
        *SUBSET,
        "trainer=cpu",
        "model=mlp",
        "model.optimizer.lr=0",
        "test=false",
        *QUIET,
    ]
    run = tmp_path / "run"
    command = [sys.executable, "-m", "fakedetect.train", *overrides, "trainer.max_epochs=200", f"hydra.run.dir={run}"]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last, killed_at = run / "checkpoints" / "last.ckpt", None
    deadline = time.monotonic() + 300
    while killed_at is None and process.poll() is None and time.monotonic() < deadline:
        try:
            if load_checkpoint(last)["epoch"] >= 2:
                process.kill()
                process.wait()
                killed_at = load_checkpoint(last)
        except Exception:  # noqa: BLE001 - not written yet, or caught mid-write
            time.sleep(0.2)
    assert killed_at is not None, "the run ended or stalled before its third epoch"
    assert [p.name for p in (run / "checkpoints").glob("epoch_*.ckpt")] == ["epoch_000.ckpt"]
    epoch, step = killed_at["epoch"], killed_at["global_step"]

    resumed = compose_config(
        "train", [*overrides, f"trainer.max_epochs={epoch + 2}", f"ckpt_path={last}"], tmp_path / "resumed"
    )
    started = time.monotonic()
    train(resumed)
    second_segment_s = time.monotonic() - started
    after = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    steps_per_epoch = step // (epoch + 1)
    assert (after["epoch"], after["global_step"]) == (epoch + 1, step + steps_per_epoch), "one more epoch, resumed"
    # the training time counts the killed segment (kept in the checkpoint by Lightning's Timer) and the resumed one
    first_segment_s = killed_at["callbacks"]["Timer"]["time_elapsed"]["train"]
    train_time_s = metrics_json(tmp_path / "resumed")["train_time_s"]
    assert first_segment_s < train_time_s < first_segment_s + second_segment_s
