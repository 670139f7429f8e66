"""A machine without the GPUs or the precision a command asks for: one line naming what was asked, what was found
and the fix, before any data is read."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from fakedetect.losses import BCEWithLogits
from fakedetect.modules import Detector
from fakedetect.nets import MLP
from fakedetect.utils.device import check_trainer_devices, check_trainer_precision, device_trainer, gpus_wanted
from fakedetect.utils.errors import ConfigError
from tests.conftest import assert_one_line, run_command

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


@pytest.mark.parametrize(
    ("devices", "wanted"), [(1, 1), (3, 3), ("2", 2), ([1], 2), ("0,3", 4), ("auto", 1), (-1, 1), (None, 1)]
)
def test_gpus_wanted_reads_every_devices_spelling(devices: object, wanted: int) -> None:
    assert gpus_wanted(devices) == wanted


def test_fewer_gpus_than_asked_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_trainer_devices("gpu", 1)
    check_trainer_devices("cpu", 8)  # CPU processes are not GPUs
    with pytest.raises(ConfigError, match=r"^trainer.accelerator=gpu trainer.devices=2: asks for 2 GPUs and this"):
        check_trainer_devices("gpu", 2)


@no_gpu
def test_the_missions_gpu_command_on_a_cpu_machine_is_one_line(tmp_path: Path) -> None:
    """`python -m fakedetect.train model=resnet18 trainer.accelerator=gpu`, and predict's and Grad-CAM's
    device=cuda."""
    # as typed: the default run folder (whose interpolations read Hydra's runtime config) is held and stays quiet
    done = run_command("train", "model=resnet18", "trainer.accelerator=gpu", "data=cifake_sample", cwd=tmp_path)
    assert_one_line(done, "trainer.accelerator=gpu", "no CUDA GPU found on this machine", "trainer=cpu")
    assert len((done.stdout + done.stderr).strip().splitlines()) == 1, "printed more than the one line"
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    assert (run / ".run.lock").is_file() and not (run / "metrics.json").exists()
    with pytest.raises(ConfigError, match=r"^device=cuda:1: no CUDA GPU found on this machine .*; run on the CPU with"):
        device_trainer("cuda:1")


def test_bfloat16_on_a_gpu_without_it_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "Tesla V100")
    check_trainer_precision("gpu", "16-mixed")
    check_trainer_precision("cpu", "bf16-mixed")  # the CPU's autocast runs bfloat16
    with pytest.raises(ConfigError, match=r"^trainer.precision=bf16-mixed: this GPU \(Tesla V100\) cannot .*16-mixed"):
        check_trainer_precision("auto", "bf16-mixed")


@pytest.mark.skipif(importlib.util.find_spec("transformer_engine") is not None, reason="Transformer Engine is here")
def test_a_precision_whose_library_is_missing_is_one_line(tmp_path: Path) -> None:
    done = run_command(
        "train", "data=cifake_sample", "trainer.precision=transformer-engine", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert_one_line(done, "trainer.precision=transformer-engine", "Transformer Engine, which is not installed")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_true_precisions_feed_the_net_its_own_dtype(dtype: torch.dtype) -> None:
    """Lightning's `*-true` precisions convert the weights and statistics, not the batch: the detector's
    preprocessing follows them."""
    detector = Detector(MLP(hidden=[8]), BCEWithLogits(), torch.optim.Adam)
    detector.set_statistics([0.5] * 3, [0.25] * 3)
    with torch.no_grad():
        probs = detector.to(dtype).eval().predict_step((torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8),))
    assert probs.shape == (2,) and probs.isfinite().all()
