"""Config values that a library would only trip on once work has started (issue 21, class 6): each is one line
naming the key, before any data is read, on a real Hydra composition of `train` and the real `train()`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from fakedetect.search.storage import check_storage
from fakedetect.train import train
from fakedetect.utils.errors import ConfigError, user_error
from tests.conftest import QUIET, assert_one_line, compose_config, run_command

SAMPLE = ["data=cifake_sample", "trainer=cpu", *QUIET]


# (overrides, what the one line says)
LATE = [
    (["trainer.max_epochs=abc"], r"trainer\.max_epochs must be int or null .*got 'abc'"),
    (["trainer.max_epochs=-5"], r"trainer: `max_epochs` must be a non-negative integer or -1"),
    (["trainer.precision=fp16"], r"^config: trainer: Precision 'fp16' is invalid"),
    (["trainer.devices=0"], r"^config: trainer: .*devices"),
    (["trainer.accelerator=tpu"], r"^config: trainer: Requirement 'torch_xla.*' not met"),
    (["trainer.strategy=nosuch"], r"^config: trainer: .*nosuch"),
    (["trainer.devices=2", "trainer.strategy=ddp_spawn"], r"trainer\.strategy=ddp_spawn: .*use trainer\.strategy=ddp"),
    (["trainer.check_val_every_n_epoch=0"], r"trainer\.check_val_every_n_epoch must be a whole number >= 1, got 0"),
    (["+trainer.accumulate_grad_batches=0"], r"trainer\.accumulate_grad_batches must be a whole number >= 1, got 0"),
    (["+trainer.gradient_clip_val=abc"], r"trainer\.gradient_clip_val must be int or float or null"),
    (["+trainer.max_time=abc"], r"^trainer\.max_time: `Timer\(duration='abc'\)` is not a valid duration"),
    (["+trainer.nosuchkey=1"], r"trainer\.nosuchkey: not an argument of lightning\.pytorch\.trainer\.Trainer"),
    (["+trainer.use_distributed_sampler=true"], r"trainer\.use_distributed_sampler=true"),
    (["model=timm", "model.net.name=resnet_18"], r"model\.net: name='resnet_18' is not a timm architecture; did"),
    (["model.optimizer.lr=abc"], r"model\.optimizer\.lr must be float or Tensor .*got 'abc'"),
    (["model.optimizer.lr=-1"], r"model\.optimizer: Invalid learning rate: -1"),
    (["+model.optimizer.betas=abc"], r"model\.optimizer\.betas must be tuple"),
    (["+model.optimizer.nosuch=1"], r"model\.optimizer\.nosuch: not an argument of torch\.optim\.Adam"),
    (["model/scheduler=onecycle", "model.scheduler.max_lr=abc"], r"model\.scheduler\.max_lr must be"),
    (["model/scheduler=onecycle", "model.scheduler.pct_start=2"], r"model\.scheduler: .*pct_start"),
    (["model/scheduler=onecycle", "model.scheduler_interval=hour"], r"model\.scheduler_interval must be epoch"),
    (["model.net.dropout=abc"], r"model\.net\.dropout must be float"),
    (["model.compile=maybe"], r"model\.compile must be bool"),
    (["callbacks.early_stopping.patience=abc"], r"callbacks\.early_stopping\.patience must be int"),
    (["callbacks.model_checkpoint.mode=up"], r"callbacks\.model_checkpoint: .*mode"),
    (["logger.tensorboard.log_graph=abc"], r"logger\.tensorboard\.log_graph must be bool"),
]


@pytest.mark.parametrize(("overrides", "message"), LATE, ids=[" ".join(o) for o, _ in LATE])
def test_late_config_errors_are_one_line_before_any_data_is_read(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    cfg = compose_config("train", [*SAMPLE, f"data.cache_dir={cache}", *overrides], tmp_path / "run")
    with pytest.raises(Exception) as raised:  # noqa: PT011 - what counts is the ConfigError behind it
        train(cfg)
    found = user_error(raised.value)
    assert found is not None, f"not a ConfigError: {raised.value!r}"
    line = str(found)
    assert "\n" not in line and re.search(message, line), line
    assert not cache.exists() or not any(cache.iterdir()), "data was read before the error"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "trainer.max_epochs=abc",
            "trainer.max_epochs must be int or null (lightning.pytorch.trainer.Trainer), got 'abc'",
        ),
        ("seed=abc", "seed must be a whole number or null, got 'abc'"),
    ],
)
def test_wrong_type_on_the_command_line_is_one_line_before_decoding(
    override: str, message: str, tmp_path: Path
) -> None:
    """`trainer.max_epochs=abc` used to decode the data, then fail inside Lightning's loop with a traceback;
    `seed=abc` failed in Lightning's seed_everything with one."""
    env = {**os.environ, "FAKEDETECT_CACHE": str(tmp_path / "cache")}
    done = run_command("train", *SAMPLE, override, f"hydra.run.dir={tmp_path / 'run'}", env=env)
    assert_one_line(done, message)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nosuch://host/db", r"no database 'nosuch' is known; use sqlite:///"),
        ("not a url", r"is not a storage URL; use sqlite:///"),
        ("mysql://user@host/db", r"the driver of mysql is not installed \(No module named 'MySQLdb'\)"),
        ("journal:", r"a journal storage names its file"),
    ],
)
def test_storage_urls_are_checked_before_any_trial(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^hydra\.sweeper\.storage=.*{message}"):
        check_storage(url, "hydra.sweeper.storage")
    check_storage("sqlite:///x.db", "storage")  # a good one passes
    check_storage("journal:x.log", "storage")


def test_sweep_on_an_unknown_storage_is_one_line(tmp_path: Path) -> None:
    done = run_command(
        "train",
        "-m",
        "hparams_search=optuna",
        *SAMPLE,
        "hydra.sweeper.storage=nosuch://host/db",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert_one_line(done, "hydra.sweeper.storage='nosuch://host/db': no database 'nosuch' is known")
