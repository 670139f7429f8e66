"""Checkpoints are untrusted input: safe unpickling, allow-listed targets, one-line errors, the safetensors export."""

from __future__ import annotations

import builtins
import copy
import json
import os
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file

from fakedetect.eval import evaluate
from fakedetect.export import export
from fakedetect.modules.checkpoint_format import FORMAT, FORMAT_KEY
from fakedetect.utils.builders import MODEL_TARGETS, build_model, instantiate
from fakedetect.utils.checkpoint import (
    CONFIG_KEY,
    DETECTOR_JSON,
    WEIGHTS_FILE,
    load_checkpoint,
    load_trained,
    resume_path,
)
from fakedetect.utils.errors import ConfigError
from tests.conftest import assert_one_line, compose_config, run_command
from tests.test_predict import train_tiny

WHITELIST_WARNING = "execution whitelist"


class OpensAFile:
    """A pickle that, unpickled without weights_only, creates the file it names."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return builtins.open, (str(self.path), "w")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, cifake_path: Path, cache_dir: Path) -> tuple[Path, list[str]]:
    """A CNN checkpoint with a Youden threshold, and the warnings its training printed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ckpt = train_tiny(tmp_path_factory.mktemp("run"), cifake_path, cache_dir, "model.threshold=youden")
    return ckpt, [str(w.message) for w in caught]


@pytest.fixture
def ckpt(run: tuple[Path, list[str]]) -> Path:
    return run[0]


def altered(ckpt: Path, out: Path, change: Callable[[dict], Any]) -> Path:
    """A copy of `ckpt` with `change` applied to its contents, as someone with a text editor and torch would."""
    checkpoint = copy.deepcopy(torch.load(ckpt, weights_only=True))
    change(checkpoint)
    torch.save(checkpoint, out)
    return out


def run_cli(command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"OMP_NUM_THREADS": "1"}
    return run_command(command, *args, f"hydra.run.dir={cwd / 'run'}", env=env, timeout=300)


def run_on_checkpoint(command: str, ckpt: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """eval or predict of `ckpt`, with what else each needs (predict checks its input before loading the checkpoint)."""
    if command == "eval":
        args = ["trainer=cpu"]
    else:
        Image.new("RGB", (32, 32)).save(tmp_path / "image.png")
        args = [f"input={tmp_path / 'image.png'}"]
    return run_cli(command, f"ckpt_path={ckpt}", *args, cwd=tmp_path)


def test_training_and_checkpoints_need_nothing_beyond_the_allow_lists(run: tuple[Path, list[str]]) -> None:
    ckpt, caught = run
    assert not [w for w in caught if WHITELIST_WARNING in w]
    assert torch.serialization.get_unsafe_globals_in_checkpoint(ckpt) == []


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_malicious_pickle_runs_nothing(command: str, ckpt: Path, tmp_path: Path) -> None:
    marker = tmp_path / "created_by_the_checkpoint"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": OpensAFile(marker)}, evil)
    last = assert_one_line(run_on_checkpoint(command, evil, tmp_path), str(evil), "'io.open'", "refused")
    assert not marker.exists(), last


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_malicious_target_runs_nothing(command: str, ckpt: Path, tmp_path: Path) -> None:
    copied = tmp_path / "copied_by_the_checkpoint"

    def copy_a_file(checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY]["data"] = {"_target_": "shutil.copyfile", "src": str(ckpt), "dst": str(copied)}

    evil = altered(ckpt, tmp_path / "evil.ckpt", copy_a_file)
    last = assert_one_line(run_on_checkpoint(command, evil, tmp_path), str(evil), "'shutil.copyfile'", "refused")
    assert not copied.exists(), last


@pytest.mark.parametrize(
    ("section", "target"),
    [
        ("loss", {"_target_": "torch.save", "obj": "x", "f": "{marker}"}),
        ("model", {"_target_": "os.system", "command": "touch {marker}"}),
        (
            "data",
            {
                "_target_": "fakedetect.data.datamodule.ImageDataModule",
                "root": "x",
                "augment": {"_target_": "torchvision.utils.save_image", "tensor": [0.0], "fp": "{marker}"},
            },
        ),
    ],
)
def test_targets_off_the_allow_list_are_refused(section: str, target: dict, ckpt: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    node = json.loads(json.dumps(target).replace("{marker}", str(marker)))
    evil = altered(ckpt, tmp_path / "evil.ckpt", lambda c: c[CONFIG_KEY].__setitem__(section, node))
    with pytest.raises(ConfigError, match="is refused") as err:
        load_trained(evil)
    assert str(evil) in str(err.value) and "\n" not in str(err.value) and not marker.exists()


def drop_config(checkpoint: dict) -> None:
    del checkpoint[CONFIG_KEY]


def mlp_weights(checkpoint: dict) -> None:
    """The state dict of another model (an MLP) under a CNN's config."""
    cfg = compose_config("train", ["model=mlp"], Path("."))
    checkpoint["state_dict"] = build_model(cfg).state_dict()


def gone_class(checkpoint: dict) -> None:
    checkpoint[CONFIG_KEY]["model"]["net"]["_target_"] = "fakedetect.nets.NoSuchNet"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda ckpt, tmp: tmp / "missing.ckpt", "no such file"),
        (lambda ckpt, tmp: tmp / "notes.ckpt", "not a PyTorch checkpoint"),
        (lambda ckpt, tmp: tmp / "truncated.ckpt", "damaged or incomplete"),
        (lambda ckpt, tmp: altered(ckpt, tmp / "plain.ckpt", drop_config), "no fakedetect config"),
        (lambda ckpt, tmp: altered(ckpt, tmp / "other.ckpt", mlp_weights), "weights do not fit"),
        (lambda ckpt, tmp: altered(ckpt, tmp / "gone.ckpt", gone_class), "'fakedetect.nets.NoSuchNet' at model.net"),
        (lambda ckpt, tmp: tmp, f"without {DETECTOR_JSON}"),
    ],
    ids=["missing", "text", "truncated", "no-config", "other-model", "unknown-class", "plain-folder"],
)
def test_bad_ckpt_paths_are_one_line_errors(
    make: Callable[[Path, Path], Path], expected: str, ckpt: Path, tmp_path: Path
) -> None:
    (tmp_path / "notes.ckpt").write_text("my training notes\n")
    data = ckpt.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    path = make(ckpt, tmp_path)
    with pytest.raises(ConfigError, match=expected) as err:
        load_trained(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_resume_checks_the_checkpoint_first(ckpt: Path, tmp_path: Path) -> None:
    cfg = compose_config("train", ["model=mlp"], tmp_path)
    with pytest.raises(ConfigError, match="weights do not fit"):
        resume_path(ckpt, build_model(cfg))
    with pytest.raises(ConfigError, match="no checkpoint file there to resume from"):
        resume_path(tmp_path, build_model(cfg))
    assert resume_path(ckpt, build_model(compose_config("train", [], tmp_path))) == str(ckpt)


def test_compiled_checkpoint_keys_load(ckpt: Path, tmp_path: Path) -> None:
    """`model.compile=true` runs of older versions saved the compiled net's `net._orig_mod.` keys."""

    def compiled_keys(checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k.replace("net.", "net._orig_mod.", 1): v for k, v in state.items()}
        del checkpoint[FORMAT_KEY]  # written before format versions

    compiled = altered(ckpt, tmp_path / "compiled.ckpt", compiled_keys)
    assert any("_orig_mod" in k for k in load_checkpoint(compiled)["state_dict"])
    expected = load_trained(ckpt).model.state_dict()
    loaded = load_trained(compiled).model.state_dict()
    assert expected.keys() == loaded.keys() and all(torch.equal(expected[k], loaded[k]) for k in expected)


def as_format1(checkpoint: dict) -> None:
    """A checkpoint as main wrote it before format versions: no version, the statistics (and the data settings)
    also in the data module's state, the detector's statistics buffers absent in the oldest ones."""
    state = checkpoint["state_dict"]
    del checkpoint[FORMAT_KEY]
    checkpoint["ImageDataModule"] = {
        "classes": ["REAL", "FAKE"],
        "resolution": 32,
        "channels": 3,
        "mean": state.pop("data_mean").tolist(),
        "std": state.pop("data_std").tolist(),
        "fit": "squash",
    }


def test_older_format_evaluates_the_same_and_a_newer_one_is_refused(ckpt: Path, tmp_path: Path) -> None:
    old = altered(ckpt, tmp_path / "format1.ckpt", as_format1)
    assert FORMAT_KEY not in load_checkpoint(old) and "data_mean" not in load_checkpoint(old)["state_dict"]

    def metrics(path: Path, out: str) -> dict[str, float]:
        return evaluate(compose_config("eval", [f"ckpt_path={path}", "trainer=cpu", "report=false"], tmp_path / out))

    assert metrics(old, "old") == metrics(ckpt, "new")
    newer = altered(ckpt, tmp_path / "newer.ckpt", lambda c: c.__setitem__(FORMAT_KEY, FORMAT + 1))
    with pytest.raises(ConfigError, match=f"checkpoint format {FORMAT + 1}, newer than") as err:
        load_trained(newer)
    assert str(newer) in str(err.value) and "\n" not in str(err.value)


def test_export_round_trip_evaluates_identically(ckpt: Path, tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    folder = export(compose_config("export", [f"ckpt_path={ckpt}", f"output={tmp_path / 'detector'}"], tmp_path))
    detector = json.loads((folder / DETECTOR_JSON).read_text())
    assert detector["thresholds"]["selected"] == "youden" and detector[FORMAT_KEY] == FORMAT
    assert "ImageDataModule" not in detector  # the statistics are in the weights, once
    state = load_checkpoint(ckpt)["state_dict"]
    weights = load_file(folder / WEIGHTS_FILE)
    assert weights.keys() == state.keys() and all(torch.equal(weights[k], state[k]) for k in state)

    def metrics(path: Path, out: str) -> dict[str, float]:
        return evaluate(compose_config("eval", [f"ckpt_path={path}", "trainer=cpu", "report=false"], tmp_path / out))

    from_ckpt, from_folder = metrics(ckpt, "eval_ckpt"), metrics(folder, "eval_folder")
    assert from_folder == from_ckpt and "test/acc" in from_ckpt
    assert not [w for w in recwarn if WHITELIST_WARNING in str(w.message)]

    with pytest.raises(ConfigError, match="overwrite=true"):
        export(compose_config("export", [f"ckpt_path={ckpt}", f"output={folder}"], tmp_path))
    with (folder / WEIGHTS_FILE).open("r+b") as f:  # one byte changed after export
        f.seek(-1, os.SEEK_END)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    with pytest.raises(ConfigError, match="SHA-256 differs"):
        load_trained(folder)


def test_run_config_targets_are_allow_listed_too(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    cfg = compose_config(
        "train", [f"+callbacks.bad={{_target_: shutil.copyfile, src: {__file__}, dst: {marker}}}"], tmp_path
    )
    with pytest.raises(ConfigError, match=r"^config: _target_ 'shutil.copyfile' at callbacks.bad is refused.*RUN_"):
        instantiate(cfg.callbacks.bad)
    with pytest.raises(ConfigError, match="MODEL_TARGETS"):
        instantiate(cfg.trainer, allow=MODEL_TARGETS)
    assert not marker.exists()


def test_forgotten_ckpt_path_is_one_line(tmp_path: Path) -> None:
    assert_one_line(run_cli("export", cwd=tmp_path), "ckpt_path is required: add ckpt_path=... to the command")


def test_a_model_that_is_not_a_detector_is_one_config_error() -> None:
    """Every command scores through Detector's interface: any other allowed module is refused when built, by name."""
    cfg = OmegaConf.create(
        {"loss": {"_target_": "fakedetect.losses.BCEWithLogits"}, "model": {"_target_": "torch.nn.Identity"}}
    )
    with pytest.raises(ConfigError, match=r"^run: model\._target_ must be fakedetect\.modules\.Detector .*torch\.nn"):
        build_model(cfg, allow=(*MODEL_TARGETS, "torch.nn.Identity"), source="run")
