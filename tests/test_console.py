"""The commands: one home and one style (every `[project.scripts]` entry is a Hydra app in the package root), and a
quiet console (a default training prints no warning, tip or deprecation line)."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import sys
import warnings
from pathlib import Path

import pytest

from tests.conftest import CONF, ROOT, SUBSET, assert_one_line, project_scripts, run_command

# a warning, a deprecation, a tip, or any line Python's warnings module formats (`file.py:LINE: message`)
NOISE = re.compile(r"warn|deprecat|\btip\b|\.py:\d+: ", re.IGNORECASE)


def test_every_command_is_a_listed_hydra_app_in_the_package_root(monkeypatch: pytest.MonkeyPatch) -> None:
    scripts = project_scripts()
    commands = sorted(p.stem for p in (ROOT / "fakedetect").glob("*.py") if p.stem != "__init__")
    assert sorted(scripts.values()) == sorted(f"fakedetect.{name}:main" for name in commands)
    for script, target in scripts.items():
        name = target.removeprefix("fakedetect.").removesuffix(":main")
        assert script == "fakedetect-" + name.replace("_", "-")
        assert (CONF / f"{name}.yaml").is_file(), name
        main = importlib.import_module(f"fakedetect.{name}").main
        assert callable(main), target
        # what `python -m fakedetect.<name> --help` and `fakedetect-<name> --help` run: Hydra's help of its config
        monkeypatch.setattr(sys, "argv", [script, "--help"])
        shown = io.StringIO()
        with contextlib.redirect_stdout(shown), pytest.raises(SystemExit) as done:
            main()
        assert done.value.code == 0, name
        assert f"{name} is powered by Hydra" in shown.getvalue() and "== Config ==" in shown.getvalue(), name


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["cross_generator", "runs=.", "metric=specificity"], ["metric=specificity", "acc, auroc, recall"]),
        (["search_report", "study=s"], ["storage is required: add storage=..."]),
    ],
    ids=["cross_generator-metric", "search_report-no-storage"],
)
def test_former_argparse_commands_end_in_one_line(args: list[str], expected: list[str], tmp_path: Path) -> None:
    done = run_command(args[0], *args[1:], cwd=tmp_path, timeout=300)
    assert_one_line(done, *expected)
    assert not list(tmp_path.iterdir()), "a report command makes no run folder"


def test_default_training_console_is_quiet(cifake_path: Path, tmp_path: Path) -> None:
    """A default CPU training, as a user starts it: the config, the splits, one progress bar, the results."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "PYTHONWARNINGS")}
    env |= {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = run_command(
        "train",
        f"data.root={cifake_path}",
        *SUBSET,
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
        env=env,
    )
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-3000:]
    noisy = [line for line in console.splitlines() if NOISE.search(line)]
    assert not noisy, noisy
    assert "GPU available" not in console and "Trainable params" not in console
    assert "task_name: train" in console and "splits: {'train': 1800" in console
    assert "Epoch 0/0" in console and "test/acc" in console and "metrics written to" in console


def test_quiet_console_drops_only_the_listed_library_warnings() -> None:
    """An autoencoder's frozen LPIPS trunk makes Lightning warn of modules in eval mode at every fit: dropped, while
    any other warning of the same category still shows."""
    from lightning.pytorch.utilities.warnings import PossibleUserWarning

    from fakedetect.utils.console import quiet_console

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        quiet_console()
        for message in ("Found 41 module(s) in eval mode at the start of training. This may ...", "Found 41 others"):
            warnings.warn(message, PossibleUserWarning, stacklevel=1)
    assert [str(w.message) for w in shown] == ["Found 41 others"]
