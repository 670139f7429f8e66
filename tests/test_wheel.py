"""fakedetect as a user installs it: an sdist and a wheel built from this checkout (the wheel from the sdist, as
`python -m build` does), the wheel installed without `-e` into a folder of its own, and its commands run from an
empty folder outside the checkout."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, assert_one_line, metrics_json

# what the build reads; a planted conf/local/default.yaml (a machine's own settings, git-ignored) must stay out
SOURCES = ("pyproject.toml", "README.md", "conf", "fakedetect", "hydra_plugins")
LOCAL = "local/default.yaml"


def checkout_files(folder: str, suffix: str) -> set[str]:
    return {p.relative_to(ROOT / folder).as_posix() for p in (ROOT / folder).rglob(f"*{suffix}")}


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and wheel of a copy of the checkout (the build writes build/ and *.egg-info beside its sources)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(origin, src / name)
    (src / "conf" / LOCAL).write_text("paths:\n  shared_dir: /this/machine/only\n")
    done = run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(base / "dist"), str(src)],
        base,
        dict(os.environ),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return base / "dist"


@pytest.fixture(scope="module")
def installed(dist: Path) -> Path:
    """The wheel installed (not editable, no dependencies: those of this environment serve) into a folder of its
    own, its console scripts in bin/."""
    target = dist.parent / "site"
    (wheel,) = dist.glob("*.whl")
    done = run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        dist,
        dict(os.environ),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return target


def user_env(site: Path) -> dict[str, str]:
    """This environment with only `site` added to the import path: not the checkout (nor a PYTHONPATH to it), no
    data or project variables of this machine."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CIFAKE", "PROJECT_ROOT", "HYDRA_FULL_ERROR")}
    return env | {"PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def test_sdist_and_wheel_carry_every_module_and_config(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    configs = {c for c in checkout_files("conf", ".yaml") if not c.startswith("local/")}
    assert len(configs) > 50 and "train.yaml" in configs
    assert {f"fakedetect/conf/{c}" for c in configs} <= in_wheel, "every config, inside the package"
    assert {f"fakedetect/{m}" for m in checkout_files("fakedetect", ".py")} <= in_wheel, "a package left unlisted"
    assert {f"hydra_plugins/{m}" for m in checkout_files("hydra_plugins", ".py")} <= in_wheel
    assert "fakedetect/data/sample/cifake_sample.zip" in in_wheel
    with tarfile.open(sdist) as tar:
        in_sdist = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {f"conf/{c}" for c in configs} <= in_sdist, "the sdist keeps the one conf/ at its top"
    assert f"fakedetect/conf/{LOCAL}" not in in_wheel and f"conf/{LOCAL}" not in in_sdist, "a machine's own settings"


def test_installed_wheel_trains_evaluates_and_predicts_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    """The README's first run and what follows it, as a user of the wheel types them in an empty folder."""
    env, work, bin_ = user_env(installed), tmp_path / "work", installed / "bin"
    work.mkdir()
    where = run(
        [sys.executable, "-c", "import fakedetect; print(fakedetect.__file__, fakedetect.config_dir())"], work, env
    )
    package, configs = where.stdout.split()
    assert Path(package).parent == installed / "fakedetect" and Path(configs) == installed / "fakedetect" / "conf"

    quiet = ["trainer=cpu", "callbacks.progress_bar=null"]
    train = run([str(bin_ / "fakedetect-train"), "data=cifake_sample", "trainer.max_epochs=1", *quiet], work, env)
    assert train.returncode == 0, train.stderr[-3000:]
    (run_dir,) = (work / "outputs" / "train" / "runs").iterdir()
    record = metrics_json(run_dir)
    assert record["data"] == "cifake_sample" and record["images"]["train"] == 1080
    ckpt = Path(record["ckpt_path"])
    assert ckpt.is_file() and ckpt.is_relative_to(work)

    evaluated = run([str(bin_ / "fakedetect-eval"), f"ckpt_path={ckpt}", *quiet[:1]], work, env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (eval_dir,) = (work / "outputs" / "eval" / "runs").iterdir()
    assert metrics_json(eval_dir)["metrics"]["test/acc"] == pytest.approx(record["metrics"]["test/acc"])

    images = tmp_path / "images"
    with zipfile.ZipFile(installed / "fakedetect" / "data" / "sample" / "cifake_sample.zip") as sample:
        names = [n for n in sample.namelist() if n.startswith("test/") and n.endswith(".jpg")][::100]
        sample.extractall(images, members=names)
    predicted = run([str(bin_ / "fakedetect-predict"), f"ckpt_path={ckpt}", f"input={images}"], work, env)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    (predict_dir,) = (work / "outputs" / "predict" / "runs").iterdir()
    with (predict_dir / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(Path(n).name for n in names)
    assert all(0.0 <= float(r["prob_fake"]) <= 1.0 and not r["error"] for r in rows)


def test_installed_package_without_its_configs_is_one_line(installed: Path, tmp_path: Path) -> None:
    """A package installed without conf/ (a broken or hand-made install): one line naming where it looked."""
    broken = tmp_path / "site"
    shutil.copytree(installed, broken, ignore=shutil.ignore_patterns("conf", "cifake_sample.zip"))
    work = tmp_path / "work"
    work.mkdir()
    done = run([str(broken / "bin" / "fakedetect-train")], work, user_env(broken))
    assert_one_line(done, "no configs found", str(broken / "fakedetect" / "conf"), "reinstall fakedetect")
    assert not list(work.iterdir()), "no run folder"
