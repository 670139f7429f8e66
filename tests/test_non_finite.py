"""Non-finite numbers never become results: a diverging training stops in one line and writes no metrics.json and no
checkpoint; checkpoints and exported detectors whose weights or statistics are NaN, infinite or a zero std are
refused where they are loaded; scores and metrics that come out non-finite stop eval and predict, naming the
checkpoint, before a report or a prediction is written. Real trainings, checkpoints, exports and commands."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from fakedetect.eval import evaluate
from fakedetect.export import export
from fakedetect.modules.checkpoint_format import STATISTICS, THRESHOLDS_BUFFER
from fakedetect.train import train
from fakedetect.utils.builders import build_model, instantiate
from fakedetect.utils.checkpoint import DETECTOR_JSON, WEIGHTS_FILE, load_trained, resume_path, sha256
from fakedetect.utils.errors import ConfigError, NonFiniteError
from tests.conftest import QUIET, assert_one_line, compose_config, run_command, subset_train_config
from tests.test_bad_input import _module, _tree
from tests.test_predict import train_tiny
from tests.test_safety import altered

# the one line of a training whose loss turned non-finite: the step, the value, what to try
DIVERGED = re.compile(r"training diverged: the training loss is (nan|inf|-inf) at step \d+ \(epoch 0, batch \d+\)")
TRIES = ("model.optimizer.lr (now 1e+09)", "trainer.gradient_clip_val=1.0")


def cli(command: str, *args: str, out: Path) -> subprocess.CompletedProcess[str]:
    """`python -m fakedetect.<command>` as a user runs it, writing under `out`."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"OMP_NUM_THREADS": "1"}
    return run_command(command, *args, f"hydra.run.dir={out}", env=env, timeout=600)


def no_result(run: Path) -> None:
    """Nothing a reader could take for a result: no metrics.json, checkpoint, report or predictions."""
    written = [p for p in run.rglob("*") if p.suffix in (".json", ".ckpt", ".csv", ".md", ".png")]
    assert not written, written


# ------------------------------------------------------------------------------ training


def test_the_issues_diverging_training_stops_in_one_line_and_leaves_no_result(tmp_path: Path) -> None:
    """`train data=cifake_sample model.optimizer.lr=1e9` used to exit 0 with NaN checkpoints and test/acc 0.5 in
    metrics.json."""
    run = tmp_path / "run"
    done = cli("train", "data=cifake_sample", "model.optimizer.lr=1e9", "trainer=cpu", *QUIET, out=run)
    line = assert_one_line(done, *TRIES)
    assert DIVERGED.search(line), line
    no_result(run)


@pytest.mark.parametrize(
    "overrides",
    [["model=autoencoder"], ["trainer.precision=bf16-mixed"]],
    ids=["autoencoder", "bf16-mixed"],
)
def test_a_diverging_autoencoder_or_mixed_precision_run_stops_the_same_way(
    overrides: list[str], cifake_path: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """The autoencoder's loss (reconstruction + classification) is checked as the classifier's is; under 16-bit
    autocast (bf16 on a CPU) the line also suggests 32-bit precision."""
    cfg = subset_train_config(
        cifake_path, cache_dir, tmp_path, *overrides, "model.optimizer.lr=1e9", "+trainer.limit_train_batches=4"
    )
    with pytest.raises(NonFiniteError) as err:
        train(cfg)
    line = str(err.value)
    assert DIVERGED.search(line) and all(t in line for t in TRIES), line
    assert ("trainer.precision=32-true" in line) == ("trainer.precision=bf16-mixed" in overrides), line
    no_result(tmp_path)


def test_weights_that_diverge_after_a_finite_loss_stop_before_anything_is_saved(
    cifake_path: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """One step at lr 1e9: its loss was finite, the weights it leaves are not usable; the validation that follows
    stops the fit (as the NaN logits or the NaN val/loss they give), before a checkpoint of them is written."""
    cfg = subset_train_config(
        cifake_path, cache_dir, tmp_path, "model.optimizer.lr=1e9", "+trainer.limit_train_batches=1"
    )
    with pytest.raises(NonFiniteError, match=r"^training diverged: (after step 1 the|val/\S+ is)") as err:
        train(cfg)
    assert "model.optimizer.lr (now 1e+09)" in str(err.value) and "\n" not in str(err.value)
    no_result(tmp_path)


def test_a_checkpoint_of_non_finite_weights_is_never_written(
    cifake_path: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """Even by a Trainer without fakedetect's callbacks, and with save_weights_only (which skips callbacks' hooks):
    the detector's own on_save_checkpoint refuses."""
    cfg = subset_train_config(cifake_path, cache_dir, tmp_path)
    model, datamodule = build_model(cfg), instantiate(cfg.data)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(tmp_path / "finite.ckpt")
    with torch.no_grad():
        next(model.net.parameters()).view(-1)[0] = math.inf
    for weights_only in (False, True):
        with pytest.raises(NonFiniteError, match=r"weights to save after step 1 are unusable \(net\.\S+ \(NaN or inf"):
            trainer.save_checkpoint(tmp_path / "diverged.ckpt", weights_only=weights_only)
    assert (tmp_path / "finite.ckpt").is_file() and not (tmp_path / "diverged.ckpt").exists()


# ------------------------------------------------------------------------------ checkpoints and exports


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, cifake_path: Path, cache_dir: Path) -> Path:
    """A CNN trained for a few batches: finite, usable weights."""
    return train_tiny(tmp_path_factory.mktemp("run"), cifake_path, cache_dir)


def first_weight(state: dict[str, torch.Tensor]) -> str:
    return next(k for k, v in state.items() if k.startswith("net.") and v.is_floating_point())


def spoil(name: str) -> Callable[[dict[str, torch.Tensor]], str]:
    """A change to a state dict, as a diverged run, a bad tool or a hand would make it; returns what is named."""

    def change(state: dict[str, torch.Tensor]) -> str:
        key = {"weight": first_weight(state), "std": STATISTICS[1], "mean": STATISTICS[0]}.get(name, THRESHOLDS_BUFFER)
        value = {"weight": math.nan, "std": 0.0, "mean": math.inf, "threshold": math.inf}[name]
        state[key].view(-1)[0] = value
        return f"{key} ({'0 or negative' if name == 'std' else 'NaN or infinite'})"

    return change


def as_export(ckpt: Path, out: Path, change: Callable[[dict[str, torch.Tensor]], str]) -> tuple[Path, str]:
    """An exported detector whose stored weights were changed after export, with detector.json's SHA-256 updated as a
    tool that rewrites the weights would (so only the values are wrong)."""
    folder = export(compose_config("export", [f"ckpt_path={ckpt}", f"output={out}"], out.parent))
    weights = load_file(folder / WEIGHTS_FILE)
    named = change(weights)
    save_file(weights, folder / WEIGHTS_FILE)
    spec = json.loads((folder / DETECTOR_JSON).read_text())
    spec["weights"]["sha256"] = sha256(folder / WEIGHTS_FILE)
    (folder / DETECTOR_JSON).write_text(json.dumps(spec))
    return folder, named


@pytest.mark.parametrize("name", ["weight", "std", "mean", "threshold"])
def test_unusable_weights_or_statistics_are_refused_where_they_are_loaded(
    name: str, ckpt: Path, tmp_path: Path
) -> None:
    """A NaN weight, a zero std, an infinite mean or an infinite fitted threshold (NaN there means none fitted), in a
    checkpoint and in an exported detector: refused in one line naming the file and the tensor, by the loader that
    eval, predict, gradcam and export share, and before a resumed training starts."""
    named: list[str] = []
    spoiled = altered(ckpt, tmp_path / "spoiled.ckpt", lambda c: named.append(spoil(name)(c["state_dict"])))
    folder, in_export = as_export(ckpt, tmp_path / "detector", spoil(name))
    for path, what in ((spoiled, named[0]), (folder, in_export)):
        with pytest.raises(NonFiniteError, match="refused") as err:
            load_trained(path)
        assert f"ckpt_path={path}: " in str(err.value) and what in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(NonFiniteError, match=re.escape(named[0])):
        resume_path(spoiled, build_model(compose_config("train", [], tmp_path)))
    with pytest.raises(NonFiniteError, match=re.escape(named[0])):
        export(compose_config("export", [f"ckpt_path={spoiled}", f"output={tmp_path / 'again'}"], tmp_path))
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_the_issues_unusable_checkpoint_and_export_are_one_line(command: str, ckpt: Path, tmp_path: Path) -> None:
    """eval of the NaN checkpoint a diverged run used to leave, and predict with an exported detector whose statistics
    make every input non-finite (a zero std): exit 1, one line, nothing written."""
    run = tmp_path / "run"
    if command == "eval":
        spoiled = altered(ckpt, tmp_path / "nan.ckpt", lambda c: spoil("weight")(c["state_dict"]))
        done, expected = cli("eval", f"ckpt_path={spoiled}", "trainer=cpu", out=run), "(NaN or infinite)"
    else:
        folder, expected = as_export(ckpt, tmp_path / "detector", spoil("std"))
        Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "image.png")
        args = (f"ckpt_path={folder}", f"input={tmp_path / 'image.png'}", f"output={run / 'predictions.csv'}")
        done = cli("predict", *args, out=run)
    assert_one_line(done, "refused", expected)
    no_result(run)


# ------------------------------------------------------------------------------ scores


def negative_variance(checkpoint: dict) -> None:
    """Finite weights that make every score NaN: a BatchNorm running variance below 0 (its square root is NaN)."""
    state = checkpoint["state_dict"]
    state[next(k for k in state if k.endswith("running_var"))].fill_(-1.0)


@pytest.mark.parametrize("thresholds", ["checkpoint", "refit"])
def test_non_finite_scores_stop_eval_naming_the_checkpoint(thresholds: str, ckpt: Path, tmp_path: Path) -> None:
    """Weights that load (all finite) but score NaN: eval used to report acc 0.5 and an AUROC, and `thresholds=refit`
    to fit Youden's and F1's on the NaN scores; now it stops at the first scored batch, before any report."""
    spoiled = altered(ckpt, tmp_path / "nan_scores.ckpt", negative_variance)
    cfg = compose_config("eval", [f"ckpt_path={spoiled}", "trainer=cpu", f"thresholds={thresholds}"], tmp_path / "run")
    with pytest.raises(NonFiniteError, match=f"^ckpt_path={re.escape(str(spoiled))}: NaN or infinite logits for"):
        evaluate(cfg)
    no_result(tmp_path / "run")


def test_non_finite_scores_stop_predict_in_one_line(ckpt: Path, tmp_path: Path) -> None:
    """predict used to label every image with `prob_fake=nan`; now one line naming the checkpoint, and no rows."""
    spoiled = altered(ckpt, tmp_path / "nan_scores.ckpt", negative_variance)
    Image.new("RGB", (48, 40), (20, 90, 200)).save(tmp_path / "image.png")
    output = tmp_path / "run" / "predictions.csv"
    done = cli(
        "predict", f"ckpt_path={spoiled}", f"input={tmp_path / 'image.png'}", f"output={output}", out=output.parent
    )
    assert_one_line(done, f"ckpt_path={spoiled}: NaN or infinite logits for 1 of 1 images", "so nothing is scored")
    no_result(tmp_path / "run")


def test_a_metric_that_overflows_is_no_result(ckpt: Path, tmp_path: Path) -> None:
    """Finite but enormous weights: the logits, or the test loss averaged over them, overflow float32. Either way eval
    stops before its report and metrics.json."""

    def enormous(checkpoint: dict) -> None:
        checkpoint["state_dict"][first_weight(checkpoint["state_dict"])].mul_(1e36)

    spoiled = altered(ckpt, tmp_path / "enormous.ckpt", enormous)
    cfg = compose_config("eval", [f"ckpt_path={spoiled}", "trainer=cpu"], tmp_path / "run")
    with pytest.raises(NonFiniteError, match=r"NaN or infinite"):
        evaluate(cfg)
    no_result(tmp_path / "run")


# ------------------------------------------------------------------------------ statistics and config values


def test_statistics_that_would_make_inputs_non_finite_are_refused_or_taken_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A detector never takes a zero or NaN std; a statistics cache holding one (damaged, or written by hand) is
    ignored with a warning and taken again from the images."""
    model = build_model(compose_config("train", [], tmp_path))
    for mean, std in (([0.5] * 3, [0.2, 0.0, 0.2]), ([math.nan] * 3, [0.2] * 3)):
        with pytest.raises(NonFiniteError, match=r"^the normalization statistics .* are unusable"):
            model.set_statistics(mean, std)
    assert not model.has_statistics
    root = _tree(tmp_path / "data")
    expected = _module(root, tmp_path).statistics()
    (cached,) = (tmp_path / "cache" / "stats").iterdir()
    for bad in ('{"mean": [NaN, 0.4, 0.4], "std": [0.2, 0.2, 0.2]}', '{"mean": [0.4, 0.4, 0.4], "std": [0, 0, 0]}'):
        cached.write_text(bad)
        with caplog.at_level(logging.WARNING):
            assert _module(root, tmp_path).statistics() == expected
        assert "ignoring the unreadable statistics cache" in caplog.text
        assert json.loads(cached.read_text()) == {"mean": expected[0], "std": expected[1]}
        caplog.clear()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model/optimizer=sgd", "model.optimizer.momentum=nan"], "model.optimizer.momentum=nan: "),
        (["trainer.max_epochs=inf"], "trainer.max_epochs=inf: "),
    ],
    ids=["nan-momentum", "inf-epochs"],
)
def test_a_non_finite_setting_is_one_line_naming_its_key(overrides: list[str], expected: str, tmp_path: Path) -> None:
    """NaN passes every range check (it compares false with every bound): SGD took momentum=nan and trained NaN;
    `trainer.max_epochs=inf` failed on an assertion inside Lightning's loop after the data was read."""
    done = cli("train", "data=cifake_sample", "trainer=cpu", *QUIET, *overrides, out=tmp_path / "run")
    assert_one_line(done, expected + "NaN and infinity are not settings")
    no_result(tmp_path / "run")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.optimizer.lr=inf"], "the optimizer's lr is inf"),
        (["model/scheduler=onecycle", "+model.scheduler.div_factor=1e-320"], "the optimizer's lr is inf"),
        (["model/scheduler=onecycle", "+model.scheduler.div_factor=0"], "model.scheduler: float division by zero"),
        (["model.optimizer.lr=-1"], "model.optimizer: Invalid learning rate: -1"),
    ],
    ids=["inf-lr", "onecycle-overflow", "onecycle-div-0", "negative-lr"],
)
def test_optimizer_values_torch_lets_through_or_rejects_late_are_config_errors(
    overrides: list[str], expected: str, cifake_path: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """In process, past the commands' check of the settings: torch's Adam takes lr=inf (it is >= 0), OneCycleLR
    makes an infinite first lr of a finite `div_factor=1e-320` and divides by a zero one, and lr=-1 was a ValueError
    traceback mid-fit: one line naming the value, before the first step."""
    with pytest.raises(ConfigError, match=re.escape(expected)):
        train(subset_train_config(cifake_path, cache_dir, tmp_path, *overrides))
    no_result(tmp_path)
