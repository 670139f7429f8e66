"""`python -m fakedetect.train`: fit a detector from the composed config, test its best checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from omegaconf import DictConfig

from fakedetect.callbacks.finite import StopOnNonFinite
from fakedetect.callbacks.log_interval import LogInterval
from fakedetect.callbacks.store_config import StoreConfig
from fakedetect.callbacks.test_scores import TestScores
from fakedetect.search.pruning import OptunaTrialCallback
from fakedetect.utils.app import command
from fakedetect.utils.builders import (
    build_list,
    build_model,
    build_trainer,
    check_optimizer,
    count_parameters,
    instantiate,
)
from fakedetect.utils.checkpoint import resume_path
from fakedetect.utils.errors import ConfigError
from fakedetect.utils.records import log_hparams, machine, plain, print_config, scalars, write_metrics
from fakedetect.utils.signals import doing

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test the best checkpoint; returns every final metric and writes them to metrics.json."""
    if cfg.get("print_config"):
        print_config(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
    trust = cfg.get("trust")  # the run's own word on the user's packages it may build
    datamodule = instantiate(cfg.data, trust=trust)
    model = build_model(cfg, trust=trust)
    if cfg.get("train"):
        check_optimizer(model)
    tested = TestScores()
    callbacks = [
        StopOnNonFinite(),  # first: a diverged step stops the run before any other callback records it
        *build_list(cfg.get("callbacks"), trust),
        StoreConfig(plain(cfg)),
        LogInterval(),
        tested,
    ]
    timers = [c for c in callbacks if isinstance(c, Timer)]
    if not timers:
        # Lightning's timer of the training loop, kept in checkpoints so that a resumed run counts every segment;
        # it also keeps trainer.max_time (Lightning then leaves it to this one)
        try:
            timers.append(Timer(duration=cfg.trainer.get("max_time")))
        except MisconfigurationException as err:
            raise ConfigError(f"trainer.max_time: {err}") from None
        callbacks.append(timers[0])
    if cfg.get("optuna_trial"):  # set by the fakedetect_optuna sweeper: report to, and be pruned by, this trial
        callbacks.append(OptunaTrialCallback(**cfg.optuna_trial, monitor=cfg.optimized_metric))
    loggers = build_list(cfg.get("logger"), trust)
    trainer = build_trainer(cfg, callbacks, loggers, trust)
    record: dict = {
        "task": cfg.task_name,
        "machine": machine(),
        "params": count_parameters(model),
        "experiment": _choice("experiment"),
        "data": _choice("data"),
    }
    # the trainable parameter count is a metric too, for a search that trades accuracy against size
    metrics: dict[str, float] = {"params": float(record["params"])}
    output = Path(cfg.paths.output_dir)
    with doing(lambda: f"{stage(trainer)} in {output}", lambda: resume_note(trainer)):
        if cfg.get("train"):
            trainer.fit(
                model, datamodule=datamodule, ckpt_path=resume_path(cfg.get("ckpt_path"), model), weights_only=True
            )
            record["train_time_s"] = timers[0].time_elapsed("train")  # every segment of a resumed run
            record["epochs"] = trainer.current_epoch
            checkpoints = trainer.checkpoint_callback
            record["ckpt_path"] = checkpoints.best_model_path if isinstance(checkpoints, ModelCheckpoint) else ""
            metrics.update(scalars(trainer.callback_metrics))
        if cfg.get("test"):
            best = record.get("ckpt_path")
            if not best:
                log.warning("no best checkpoint; testing the current weights")
            trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
            metrics.update(scalars(trainer.callback_metrics))
            record["per_source"] = tested.rows
    record["metrics"] = metrics
    record["images"] = datamodule.split_sizes
    if trainer.is_global_zero:
        write_metrics(output / "metrics.json", record)
        log_hparams(trainer.loggers, cfg, {k: v for k, v in metrics.items() if k.startswith(("val/", "test/"))})
    return metrics


# what each of Lightning's running stages is, for the line a stop signal prints
STAGES = {
    RunningStage.SANITY_CHECKING: "checking the validation loop before training",
    RunningStage.TRAINING: "training",
    RunningStage.VALIDATING: "validating",
    RunningStage.TESTING: "testing",
}


def stage(trainer: L.Trainer) -> str:
    """What the trainer is doing, e.g. `training (epoch 3, step 1200)`."""
    name = STAGES.get(trainer.state.stage, "setting up") if trainer.state.stage else "setting up"
    return f"{name} (epoch {trainer.current_epoch}, step {trainer.global_step})"


def resume_note(trainer: L.Trainer) -> str:
    """What a stopped training leaves to go on from: once fitted, the best checkpoint to evaluate; before, last.ckpt
    (conf/callbacks/model_checkpoint.yaml), the latest whole epoch, to resume from, if one was written."""
    best = trainer.checkpoint_callback
    if trainer.state.fn == TrainerFn.TESTING and isinstance(best, ModelCheckpoint) and best.best_model_path:
        return f"no metrics.json was written; test the best checkpoint with eval ckpt_path={best.best_model_path}"
    folders = {Path(c.dirpath) for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.dirpath}
    found = [f / "last.ckpt" for f in sorted(folders) if (f / "last.ckpt").is_file()]
    if not found:
        return "no checkpoint was written and no metrics.json"
    return f"no metrics.json was written; resume from the last whole epoch with ckpt_path={found[0]}"


def _choice(group: str) -> str | None:
    """The option picked for a config group (`data: cifake_sample` marks a run on the packaged sample)."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return choices.get(group)


def metric_value(metrics: dict[str, float], name: str | Sequence[str] | None) -> float | list[float] | None:
    """The value a sweeper optimizes (a list of names: one value each); a missing name is a config error."""
    if not name:
        return None
    if not isinstance(name, str):
        return [_logged(metrics, n) for n in name]
    return _logged(metrics, name)


def _logged(metrics: dict[str, float], name: str) -> float:
    if name not in metrics:
        raise ConfigError(f"optimized_metric '{name}' was not logged; logged: {sorted(metrics)}")
    return metrics[name]


@command("train")
def main(cfg: DictConfig) -> float | list[float] | None:
    return metric_value(train(cfg), cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
