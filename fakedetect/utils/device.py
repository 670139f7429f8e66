"""The device of a command that scores outside a training config (predict, gradcam), its Lightning trainer, and
the check that the machine has the GPUs a config asks for."""

from __future__ import annotations

import importlib.util
from typing import Any

import lightning as L
import torch

from fakedetect.utils.errors import ConfigError

GPU_ACCELERATORS = ("gpu", "cuda")


def require_gpus(key: str, wanted: int, cpu_fix: str) -> None:
    """One line before any work, naming what was asked (`key`), what was found and the fix, where the machine has
    fewer CUDA GPUs than `wanted`; Lightning's own error would come later, as a traceback."""
    found = torch.cuda.device_count()
    if found >= wanted:
        return
    if not found:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        raise ConfigError(
            f"{key}: no CUDA GPU found on this machine (torch {torch.__version__}, {build}); "
            f"run on the CPU with {cpu_fix}"
        )
    raise ConfigError(f"{key}: asks for {wanted} GPUs and this machine has {found}; ask for at most {found}")


def gpus_wanted(devices: object) -> int:
    """How many GPUs a Trainer's `devices` needs at least: a count, a list (or "0,2") of indices, or auto / -1."""
    if isinstance(devices, str) and "," in devices:
        devices = [int(i) for i in devices.split(",") if i.strip()]
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if isinstance(devices, int) and not isinstance(devices, bool):
        return max(devices, 1)
    if isinstance(devices, (list, tuple)) and devices:
        return max(int(i) for i in devices) + 1
    return 1


def check_trainer_devices(accelerator: object, devices: object) -> None:
    """A trainer config that asks for GPUs this machine lacks is one line, before the data or model is touched."""
    if str(accelerator) in GPU_ACCELERATORS:
        require_gpus(
            f"trainer.accelerator={accelerator} trainer.devices={devices}",
            gpus_wanted(devices),
            "trainer=cpu (or trainer.accelerator=cpu)",
        )


def check_trainer_precision(accelerator: object, precision: object) -> None:
    """A precision the machine cannot run is one line before any work; torch would fail at the first bfloat16
    kernel of an older GPU, and Lightning at Trainer construction when Transformer Engine is missing."""
    key = f"trainer.precision={precision}"
    on_gpu = str(accelerator) in GPU_ACCELERATORS or (str(accelerator) == "auto" and torch.cuda.is_available())
    if (
        str(precision).startswith("bf16")
        and on_gpu
        and torch.cuda.is_available()
        and not torch.cuda.is_bf16_supported()
    ):
        raise ConfigError(
            f"{key}: this GPU ({torch.cuda.get_device_name()}) cannot compute in bfloat16; "
            "use trainer.precision=16-mixed (or precision=auto, which picks it)"
        )
    if str(precision).startswith("transformer-engine") and importlib.util.find_spec("transformer_engine") is None:
        raise ConfigError(f"{key}: needs NVIDIA Transformer Engine, which is not installed; use bf16-mixed or 16-mixed")


def resolve_device(device: str) -> torch.device:
    """`auto` is the GPU when there is one, else the CPU; any other value is torch's own device name."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)


def device_trainer(device: str, **kwargs: Any) -> L.Trainer:
    """A quiet one-device Trainer for `trainer.predict` / `trainer.test` on `device` (cpu, cuda, cuda:1, auto):
    no logger, checkpoints or progress bar of its own."""
    where = resolve_device(device)
    if where.type == "cuda":
        require_gpus(f"device={device}", (where.index or 0) + 1, "device=cpu")
    return L.Trainer(
        accelerator="gpu" if where.type == "cuda" else where.type,
        devices=[where.index] if where.index is not None else 1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        **kwargs,
    )
