"""Shared fixtures: the real CIFAKE archive, a session decode cache and Hydra-composed configs."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

from fakedetect.eval import evaluate
from fakedetect.modules.detector import Detector

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# This machine's shared data and weights, from the variables conf/paths/default.yaml reads (paths.shared_dir,
# paths.weights_dir), with the same defaults
SHARED_DIR = Path(os.environ.get("FAKEDETECT_SHARED", ROOT.parent / "shared"))
WEIGHTS_DIR = Path(os.environ.get("FAKEDETECT_WEIGHTS", SHARED_DIR / "weights"))
CIFAKE = Path(os.environ.get("CIFAKE_TEST_ARCHIVE", SHARED_DIR / "data" / "cifake" / "cifake.tar.gz"))
# One small stratified CIFAKE subset shared by the training tests, so it is decoded once per session.
SUBSET = ["data.train_limit=2000", "data.test_limit=1000"]
# A test run prints no config dump and no progress bar.
QUIET = ["print_config=false", "callbacks.progress_bar=null"]


def needs(path: Path, hint: str = "") -> None:
    """Skip the test where this machine lacks `path` (data or weights), but fail under CI, which must have it."""
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} missing under CI")
        pytest.skip(f"{path} not found{hint}")


@pytest.fixture(scope="session")
def cifake_path() -> Path:
    needs(CIFAKE, " (set CIFAKE_TEST_ARCHIVE)")
    return CIFAKE


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One decode cache for the session; also `paths.cache_dir` (eval's) and every subprocess's, via the variable."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["FAKEDETECT_CACHE"] = str(path)
    return path


def run_command(
    command: str,
    *args: str,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`python -m fakedetect.<command> <args>` as a user runs it, in `cwd` with `env` (default: this process's),
    its output captured as text; `check` raises on a non-zero exit."""
    return subprocess.run(
        [sys.executable, "-m", f"fakedetect.{command}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def assert_one_line(done: subprocess.CompletedProcess, *expected: str) -> str:
    """A command that failed as users should see it: exit 1, no traceback, a last line `error: ...` holding every
    `expected` text. Returns that line."""
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(e in last for e in expected), last
    return last


def project_scripts() -> dict[str, str]:
    """`[project.scripts]` of pyproject.toml, command -> `module:function` (read as text: tomllib is Python 3.11+,
    the project supports 3.10)."""
    section = re.search(
        r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", (ROOT / "pyproject.toml").read_text(), re.MULTILINE | re.DOTALL
    )
    return dict(re.findall(r"^([\w.-]+)\s*=\s*[\"']([\w.:]+)[\"']", section.group(1), re.MULTILINE)) if section else {}


def event_files(folder: Path) -> Iterator[EventAccumulator]:
    """Every TensorBoard event file under `folder`, loaded."""
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        events = EventAccumulator(str(path))
        events.Reload()
        yield events


def event_tags(folder: Path, plugin: str) -> set[str]:
    """The tags of one TensorBoard plugin ("scalars", "images", "hparams") over every event file under `folder`."""
    return {
        tag
        for events in event_files(folder)
        if plugin in events.ActivePlugins()
        for tag in events.PluginTagToContent(plugin)
    }


def compose_config(name: str, overrides: list[str], out: Path) -> DictConfig:
    """Compose a config as `python -m fakedetect.<name>` would, with outputs under `out`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out)
        del cfg["hydra"]  # as in a real run: the resolver reads HydraConfig, the job never sees `hydra`
    return cfg


def metrics_json(folder: Path) -> dict[str, Any]:
    """The metrics.json in `folder`: a train or eval run's record, or an eval report's summary."""
    return json.loads((folder / "metrics.json").read_text())


def evaluate_run(run: Path, out: Path, *overrides: str) -> dict[str, float]:
    """`eval` on CPU of the checkpoint that the training run in `run` recorded, with outputs under `out`."""
    ckpt = metrics_json(run)["ckpt_path"]
    return evaluate(compose_config("eval", [f"ckpt_path={ckpt}", "trainer=cpu", *overrides], out))


def subset_train_config(cifake: Path, cache: Path, out: Path, *overrides: str) -> DictConfig:
    """A train config on the shared CIFAKE subset, quiet and on CPU, with outputs under `out`."""
    base = [
        f"data.root={cifake}",
        f"data.cache_dir={cache}",
        *SUBSET,
        "trainer=cpu",
        *QUIET,
    ]
    return compose_config("train", [*base, *overrides], out)


@pytest.fixture
def train_cfg(cifake_path: Path, cache_dir: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """A factory of `subset_train_config`s writing under the test's tmp_path."""

    def make(*overrides: str) -> DictConfig:
        return subset_train_config(cifake_path, cache_dir, tmp_path, *overrides)

    return make


def sideways_jpeg(height: int, width: int) -> bytes:
    """A JPEG stored `width` wide, left half red and right half blue, with EXIF orientation 6 (shown turned 90
    degrees clockwise): decoded upright it is taller than wide, red on top and blue at the bottom."""
    array = np.zeros((height, width, 3), np.uint8)
    array[:, : width // 2, 0] = 255
    array[:, width // 2 :, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


@torch.no_grad()
def predicted(model: Detector, batches: Iterable[Sequence[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """P(FAKE) and labels of every batch by the detector's own predict step, in eval mode, outside Lightning's
    loops: the independent figure a test compares Lightning's to."""
    model.eval()
    scored = [(model.predict_step(batch).cpu(), batch[1].cpu()) for batch in batches]
    return torch.cat([p for p, _ in scored]), torch.cat([y for _, y in scored])
