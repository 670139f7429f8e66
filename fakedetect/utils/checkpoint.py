"""Self-contained checkpoints and exported detectors: the resolved run config travels inside, so eval, predict and
gradcam need nothing else. The detector's buffers hold the normalization statistics; the checkpoint format and the
one upgrade of older files are `fakedetect.modules.checkpoint_format`'s.

Checkpoints are untrusted input. They are unpickled with `weights_only=True`: torch's own allow-list of tensors and
plain containers is all that fakedetect writes (checkpoints of every `model=` option, with their optimizer,
scheduler and callback states, hold no other global), so nothing is added to it and nothing in a file can run. The
stored config is rebuilt only through `MODEL_TARGETS` and the user's own packages that the loading command
trusts (`fakedetect.utils.builders.trusted`), never through the trust the file itself records. An exported
detector (`python -m fakedetect.export`) is a folder of `model.safetensors` and `detector.json`, which involve no
pickle at all.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fakedetect.data.datamodule import ImageDataModule
from fakedetect.modules.checkpoint_format import FORMAT, FORMAT_KEY, unusable, upgrade
from fakedetect.modules.detector import Detector
from fakedetect.utils.builders import MODEL_TARGETS, build_model, instantiate
from fakedetect.utils.errors import ConfigError, NonFiniteError
from fakedetect.utils.files import atomic_path, write_atomic

CONFIG_KEY = "fakedetect_config"
DETECTOR_JSON, WEIGHTS_FILE = "detector.json", "model.safetensors"
# the file type of detector.json; its checkpoint format (FORMAT_KEY) versions the contents, as in a checkpoint
DETECTOR_FORMAT = "fakedetect.detector/1"
# `tta=checkpoint` (eval's and predict's default) keeps the test-time augmentation the detector was trained with
CHECKPOINT_TTA = "checkpoint"
WHERE = (
    "give a .ckpt from a training run (outputs/train/runs/<run>/checkpoints/) or a folder written by "
    "`python -m fakedetect.export`"
)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents, unpickled with `weights_only=True`; any other file is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path}: no such file; {WHERE}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only names the first global outside its allow-list: what unpickling would have called
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found is None:
            raise ConfigError(f"ckpt_path={path}: not a PyTorch checkpoint (unpickling failed); {WHERE}") from None
        raise ConfigError(
            f"ckpt_path={path}: refused: unpickling it would call '{found.group(1)}', which no "
            "fakedetect checkpoint holds (nothing was run); load checkpoints only from sources you "
            "trust"
        ) from None
    except Exception as err:  # noqa: BLE001 - torch.load fails on a foreign or damaged file with any exception type
        raise ConfigError(
            f"ckpt_path={path}: not a PyTorch checkpoint, or a damaged or incomplete one "
            f"({type(err).__name__}); {WHERE}"
        ) from None
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"ckpt_path={path}: holds a {type(checkpoint).__name__}, not a checkpoint; {WHERE}")
    return checkpoint


def checkpoint_config(checkpoint: Mapping[str, Any], path: str | Path = "") -> DictConfig:
    """The run config stored in a checkpoint, checked for the parts a detector is rebuilt from."""
    stored = checkpoint.get(CONFIG_KEY)
    if not isinstance(stored, dict):
        raise ConfigError(
            f"ckpt_path={path}: no fakedetect config in it (key '{CONFIG_KEY}'), so its model cannot "
            "be rebuilt; use a checkpoint written by `python -m fakedetect.train`"
        )
    cfg = OmegaConf.create(stored)
    missing = [key for key in ("data", "model", "loss") if not isinstance(cfg.get(key), DictConfig)]
    if missing:
        raise ConfigError(f"ckpt_path={path}: its fakedetect config has no {', '.join(missing)} section")
    return cfg


@dataclass
class Trained:
    """A checkpoint's detector in eval mode (it preprocesses raw images itself), with the data module its run
    config builds (the classes, and how images are decoded)."""

    model: Detector
    datamodule: ImageDataModule
    config: DictConfig
    global_step: int
    # the thresholds the checkpoint recorded (0.5, youden, f1, selected, value); None in older checkpoints
    thresholds: dict | None = None

    def choose_tta(self, tta: str | None) -> None:
        """The test-time augmentation asked for on the command line (flip, null), or `checkpoint` for the one the
        detector was trained with; every score of it, test metrics included, then uses that one."""
        if tta != CHECKPOINT_TTA:
            self.model.tta = tta


def load_trained(
    ckpt_path: str | Path, data: Mapping[str, Any] | None = None, trust: str | Sequence[str] | None = None
) -> Trained:
    """Rebuild model and data module from a checkpoint or an exported detector folder alone; `data` values (not
    None) replace its data config. Its config may build `MODEL_TARGETS` and what the loading command trusts
    (`trust`, its own setting): the `trust` stored in the file is never read."""
    path = Path(ckpt_path)
    checkpoint = upgrade(read_detector(path) if path.is_dir() else load_checkpoint(path), f"ckpt_path={path}")
    cfg = checkpoint_config(checkpoint, path)
    for key, value in (data or {}).items():
        if value is not None:
            cfg.data[key] = value
    datamodule = instantiate(cfg.data, allow=MODEL_TARGETS, trust=trust, source=f"ckpt_path={path}")
    model = build_model(cfg, allow=MODEL_TARGETS, trust=trust, source=f"ckpt_path={path}")
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"ckpt_path={path}: no state dict of tensors in it; {WHERE}")
    model.on_load_checkpoint(checkpoint)  # as Lightning would: the statistics buffers take their stored shape
    check_weights(model, state, path)
    model.load_state_dict(state)
    if not model.has_statistics:
        raise ConfigError(f"ckpt_path={path}: no normalization statistics in it, so its detector cannot score images")
    model.origin = f"ckpt_path={path}"
    step = checkpoint.get("global_step", 0)
    return Trained(model.eval(), datamodule, cfg, step if isinstance(step, int) else 0, checkpoint.get("thresholds"))


def check_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """A state dict that does not fit `model` is told in one line rather than load_state_dict's list of keys; one
    whose weights or statistics hold NaN or infinity (or a std not above 0) is refused: no score of it is a number."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape)
    problems = [
        f"{len(keys)} {what} (e.g. {keys[0]})"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
        if keys
    ]
    if problems:
        raise ConfigError(
            f"ckpt_path={path}: its weights do not fit the model its config builds: "
            f"{', '.join(problems)} of {len(expected)} keys; it was written for another model or altered"
        )
    bad = unusable(state)
    if bad:
        raise NonFiniteError(
            f"ckpt_path={path}: refused: {len(bad)} of its {len(state)} weights and statistics are unusable (e.g. "
            f"{bad[0]}), so every score of it would be NaN or meaningless; it comes from a diverged training or was "
            "altered: use a checkpoint of a run that ended well"
        )


def resume_path(path: str | Path | None, model: L.LightningModule) -> str | None:
    """A checkpoint to resume from, checked before Lightning reads it (weights_only too): one line if it is missing,
    not a checkpoint, refused, or written for another model."""
    if path is None:
        return None
    if not Path(path).is_file():
        raise ConfigError(
            f"ckpt_path={path}: no checkpoint file there to resume from; give a run's "
            "checkpoints/last.ckpt (an exported detector folder holds no training state)"
        )
    checkpoint = load_checkpoint(path)
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or "loops" not in checkpoint:
        raise ConfigError(
            f"ckpt_path={path}: not a training checkpoint Lightning can resume from (no state dict "
            "or loop state); resume from a run's checkpoints/last.ckpt"
        )
    model.on_load_checkpoint(checkpoint)
    check_weights(model, state, path)
    return str(path)


def export_detector(trained: Trained, output: str | Path, source: str | Path = "") -> Path:
    """Write `output`/model.safetensors and `output`/detector.json (no pickle): the format to hand to others."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    weights = output / WEIGHTS_FILE
    with atomic_path(weights) as tmp:
        # clones: safetensors refuses tensors that share memory, and writes contiguous ones only
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in trained.model.state_dict().items()}, tmp)
    detector = {
        "format": DETECTOR_FORMAT,
        "exported_from": str(source),
        "weights": {"file": WEIGHTS_FILE, "sha256": sha256(weights)},
        "global_step": trained.global_step,
        FORMAT_KEY: FORMAT,
        "thresholds": trained.thresholds,
        CONFIG_KEY: OmegaConf.to_container(trained.config, resolve=True),
    }
    # last, and whole: a folder is an export once detector.json names its weights
    write_atomic(output / DETECTOR_JSON, json.dumps(detector, indent=1, allow_nan=True))
    return output


def read_detector(folder: Path) -> dict[str, Any]:
    """An exported detector folder as the checkpoint-like dict `load_trained` rebuilds from."""
    spec = folder / DETECTOR_JSON
    if not spec.is_file():
        raise ConfigError(f"ckpt_path={folder}: a folder without {DETECTOR_JSON}, so not an exported detector; {WHERE}")
    try:
        detector = json.loads(spec.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{spec}: not valid JSON ({err}); export the checkpoint again") from None
    if not isinstance(detector, dict) or detector.get("format") != DETECTOR_FORMAT:
        raise ConfigError(f"{spec}: not a {DETECTOR_FORMAT} file; export the checkpoint again")
    weights = folder / WEIGHTS_FILE
    expected = (detector.get("weights") or {}).get("sha256")
    if not weights.is_file() or sha256(weights) != expected:
        raise ConfigError(
            f"{weights}: missing, or not the file {DETECTOR_JSON} was written with (SHA-256 differs); "
            "copy the whole exported folder again"
        )
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"{weights}: not a readable safetensors file ({err})") from None
    return {**detector, "state_dict": state}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
