"""A project of one's own around fakedetect (examples/my_project), run as its user runs it: from a folder outside
the checkout, its package on PYTHONPATH and its conf/ on Hydra's search path. Its classes are built only where
the user trusts them, and a checkpoint of them never grants that trust itself."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from fakedetect.eval import evaluate
from fakedetect.export import export
from fakedetect.search.sweeper import trust_overrides
from fakedetect.tools.download import SAMPLE
from fakedetect.utils.builders import TRUST_ENV, instantiate, trusted
from fakedetect.utils.checkpoint import CONFIG_KEY, DETECTOR_JSON, load_checkpoint, load_trained
from fakedetect.utils.errors import ConfigError
from tests.conftest import QUIET, ROOT, assert_one_line, compose_config, metrics_json, run_command

EXAMPLE = ROOT / "examples" / "my_project"
TRUST = "my_project.*"
# one epoch of a few batches on the CIFAKE sample inside the package: seconds on a CPU
TINY = [
    "data=cifake_sample",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=1",
    "data.batch_size=32",
    *QUIET,
]


@pytest.fixture(autouse=True)
def no_trust_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust here is only what each test gives: the shell running the tests may set FAKEDETECT_TRUST."""
    monkeypatch.delenv(TRUST_ENV, raising=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example project copied to a folder of its own, outside the checkout."""
    folder = tmp_path_factory.mktemp("user") / "my_project"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__", "outputs"))
    return folder


def user(project: Path, command: str, *args: str, trust: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m fakedetect.<command>` in the project's folder with its package importable; FAKEDETECT_TRUST only
    if `trust` is given (the shell running the tests may have its own)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", TRUST_ENV, "PROJECT_ROOT")}
    # the project's package, and this checkout's fakedetect as a user's install (the editable one may be another tree)
    env["PYTHONPATH"] = os.pathsep.join([str(project), str(ROOT)])
    env["OMP_NUM_THREADS"] = "1"
    if trust is not None:
        env[TRUST_ENV] = trust
    return run_command(command, *args, cwd=project, env=env, timeout=300)


@pytest.fixture(scope="module")
def run(project: Path) -> Path:
    """The project's experiment (its residual CNN and Poly-1 loss, trusted by the experiment) trained for a few
    batches; its run folder."""
    done = user(project, "train", "--config-dir", "conf", "experiment=residual_poly", "test=false", *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    return finished(project / "outputs" / "train" / "runs")


def finished(runs: Path) -> Path:
    """The one run folder under `runs` with a metrics.json (a refused command leaves a folder with its log only)."""
    (folder,) = [f for f in runs.iterdir() if (f / "metrics.json").exists()]
    return folder


def test_user_classes_are_refused_without_trust(project: Path) -> None:
    """The project's model option without the experiment that trusts it: one line naming target, key and fix."""
    done = user(project, "train", "--config-dir", "conf", "model=residual_cnn", *TINY)
    assert_one_line(
        done,
        "_target_ 'my_project.nets.ResidualCNN' at model.net is refused",
        "RUN_TARGETS",
        f"trust=[{TRUST}] or {TRUST_ENV}={TRUST}",
    )


def test_trained_run_builds_the_users_classes(run: Path, monkeypatch: pytest.MonkeyPatch, project: Path) -> None:
    record = metrics_json(run)
    assert record["experiment"] == "residual_poly" and record["epochs"] == 1
    ckpt = Path(record["ckpt_path"])
    assert OmegaConf.create(load_checkpoint(ckpt)[CONFIG_KEY]).trust == [TRUST], "the run's trust is recorded"
    monkeypatch.syspath_prepend(str(project))
    model = load_trained(ckpt, trust=[TRUST]).model
    assert type(model.net).__qualname__ == "ResidualCNN" and type(model.net).__module__ == "my_project.nets"
    assert type(model.loss).__module__ == "my_project.losses" and model.loss.epsilon == 1.0


@pytest.fixture(scope="module")
def detector(run: Path, project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's checkpoint exported with the command's `trust=` (in this process, the project's package imported)."""
    output = tmp_path_factory.mktemp("export") / "detector"
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(project))
        cfg = compose_config(
            "export", [f"ckpt_path={metrics_json(run)['ckpt_path']}", f"output={output}", f"trust=[{TRUST}]"], output
        )
        return export(cfg)


def test_eval_and_predict_with_trust(run: Path, detector: Path, project: Path, tmp_path: Path) -> None:
    """Each way of giving the trust at load time: eval's `trust=`, then the variable for predict of the export."""
    ckpt = metrics_json(run)["ckpt_path"]
    evaluated = user(project, "eval", f"ckpt_path={ckpt}", f"trust=[{TRUST}]", "trainer=cpu", "report=false")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert 0 <= metrics_json(finished(project / "outputs" / "eval" / "runs"))["metrics"]["test/acc"] <= 1

    images = tmp_path / "images"
    images.mkdir()
    with zipfile.ZipFile(SAMPLE) as sample:  # two of the sample's test images, one of each class
        for name in ("test/REAL/0005 (4).jpg", "test/FAKE/11.jpg"):
            (images / name.replace("/", "_")).write_bytes(sample.read(name))
    predictions = tmp_path / "predictions.csv"
    predicted = user(
        project, "predict", f"ckpt_path={detector}", f"input={images}", f"output={predictions}", trust=TRUST
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    rows = list(csv.DictReader(predictions.open()))
    assert len(rows) == 2 and all(0 <= float(r["prob_fake"]) <= 1 and not r["error"] for r in rows)


def test_checkpoint_of_user_classes_is_refused_at_load_without_trust(
    run: Path, detector: Path, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint records `trust: [my_project.*]`; that is never read back: a file cannot grant itself trust.
    (eval here runs in this process, its package importable: only the trust is missing.)"""
    monkeypatch.syspath_prepend(str(project))
    ckpt = metrics_json(run)["ckpt_path"]
    expected = (
        f"ckpt_path={ckpt}: _target_ 'my_project.losses.Poly1BCE' at loss is refused: fakedetect builds only targets "
        "on its allow-list (fakedetect.utils.builders.MODEL_TARGETS); if it is your own code, trust it: "
        f"trust=[{TRUST}] or {TRUST_ENV}={TRUST}"
    )
    with pytest.raises(ConfigError) as refused:
        evaluate(compose_config("eval", [f"ckpt_path={ckpt}", "trainer=cpu", "report=false"], tmp_path))
    assert str(refused.value) == expected
    assert "my_project.*" in (detector / DETECTOR_JSON).read_text(), "the export records the run's trust too"
    with pytest.raises(ConfigError, match=rf"^ckpt_path={detector}: _target_ 'my_project\..*MODEL_TARGETS"):
        load_trained(detector)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("os.*", r"^trust=os\.\*: os is Python's standard library"),
        (["mylab.*", "torch.*"], r"^trust=torch\.\*: what fakedetect builds of torch is its allow-list"),
        ("fakedetect.nets.Evil", r"^trust=fakedetect\.nets\.Evil: what fakedetect builds of fakedetect"),
        ("*", r"^trust=\*: not a module pattern"),
        ("my lab.*", r"^trust=my lab\.\*: not a module pattern"),
        ({"mylab": 1}, r"^trust=\{'mylab': 1\}: give a list of your own packages"),
    ],
    ids=["stdlib", "listed-package", "fakedetect", "everything", "not-a-module", "mapping"],
)
def test_trust_names_only_the_users_own_packages(setting: object, expected: str) -> None:
    """Trust cannot widen what the allow-lists decide (torch.save stays refused) nor reach the standard library."""
    with pytest.raises(ConfigError, match=expected):
        trusted(setting)  # type: ignore[arg-type]


def test_trust_from_the_environment_is_checked_and_added(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRUST_ENV, "mylab.*, otherlab.nets.Net")
    assert trusted(["mylab.*"]) == ("mylab.*", "otherlab.nets.Net")
    monkeypatch.setenv(TRUST_ENV, "shutil.*")
    with pytest.raises(ConfigError, match=rf"^{TRUST_ENV}=shutil\.\*: shutil is Python's standard library"):
        instantiate({"_target_": "torch.nn.Identity"})


def test_untrusted_module_is_never_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused target is refused by name: its module does not run, so naming one in a file runs nothing."""
    marker = tmp_path / "imported"
    (tmp_path / "sideeffect_pkg.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nclass Net:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"'sideeffect_pkg\.Net' is refused.*trust=\[sideeffect_pkg\.\*\]"):
        instantiate({"_target_": "sideeffect_pkg.Net"})
    assert not marker.exists()
    assert type(instantiate({"_target_": "sideeffect_pkg.Net"}, trust="sideeffect_pkg.*")).__name__ == "Net"
    assert marker.exists()


def test_trusted_package_missing_from_the_path_is_one_line() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^config: _target_ 'no_such_lab\.nets\.Net' cannot be imported \(ModuleNotFoundError: No module named "
        r"'no_such_lab'\): .* not installed or on PYTHONPATH$",
    ):
        instantiate({"_target_": "no_such_lab.nets.Net"}, trust=["no_such_lab.*"])


def test_search_hands_its_trust_to_the_test_of_its_best_trial() -> None:
    """The override the sweeper adds to its eval of the best trial parses back to the search's own patterns."""
    (override,) = OverridesParser.create().parse_overrides(trust_overrides(OmegaConf.create([TRUST, "lab.nets.Net"])))
    assert override.key_or_group == "trust" and override.value() == [TRUST, "lab.nets.Net"]
    assert trust_overrides(TRUST) == [f"trust=['{TRUST}']"] and trust_overrides([]) == []


@pytest.mark.slow
def test_project_search_tests_its_best_trial_with_the_searchs_trust(project: Path) -> None:
    """Two trials of the project's own search over its net's and loss's parameters; the sweeper's test of the best
    trial's checkpoint (a separate eval) is given the search's trust, which the checkpoint alone never grants."""
    done = user(
        project,
        "train",
        "-m",
        "--config-dir",
        "conf",
        "hparams_search=residual_optuna",
        "hydra.sweeper.n_trials=2",
        *TINY,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (report,) = (project / "outputs" / "train" / "multiruns").glob("*/report")
    rows = list(csv.DictReader((report / "best_trials.csv").open()))
    assert len(rows) == 2 and {"model.net.width", "model.net.blocks", "loss.epsilon"} <= set(rows[0])
    assert 0 <= float(rows[0]["test/acc"]) <= 1, "the best trial was tested"
