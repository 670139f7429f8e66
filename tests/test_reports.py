"""Evaluation reports, robustness, degradations, the data audit, the results table and the analysis notebook."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import nbclient
import nbformat
import numpy as np
import optuna
import pytest
import torch
from PIL import Image

from fakedetect.data.augment import BatchAugment
from fakedetect.data.datamodule import ImageDataModule
from fakedetect.data.degrade import blur, degrade, jpeg, noise, resize
from fakedetect.metrics.thresholds import f1_threshold, youden_threshold
from fakedetect.reporting.results import collect, table, update_readme
from fakedetect.reporting.robustness import parse_condition, robustness_table
from fakedetect.tools.audit.dataset import audit, hamming_groups
from fakedetect.train import train
from fakedetect.utils.errors import ConfigError
from tests.conftest import ROOT, evaluate_run, metrics_json, subset_train_config
from tests.synthetic import smooth_images


def test_degradations_keep_shape_and_grow_with_strength() -> None:
    x = smooth_images(8)
    error = {}
    for kind, weak, strong in (("jpeg", 95, 30), ("resize", 0.5, 0.25), ("blur", 0.5, 2.0), ("noise", 0.01, 0.1)):
        a, b = degrade(x, kind, weak), degrade(x, kind, strong)
        assert a.shape == x.shape and a.dtype == torch.uint8
        error[kind] = ((a.float() - x.float()).abs().mean(), (b.float() - x.float()).abs().mean())
        assert 0 < error[kind][0] < error[kind][1], (kind, error[kind])
    assert torch.equal(blur(x, torch.zeros(len(x))), x)
    assert torch.equal(jpeg(x, torch.tensor([90] * len(x))), jpeg(x, 90))
    assert resize(x, 1.0).sub(x.int()).abs().max() <= 1
    assert noise(x, 0.0).equal(x)
    with pytest.raises(KeyError, match="unknown degradation 'sharpen'"):
        degrade(x, "sharpen", 1.0)


def test_blur_jpeg_augmentation_changes_about_the_asked_share() -> None:
    torch.manual_seed(0)
    x = smooth_images(400).float() / 255
    out = BatchAugment(blur_prob=0.5, blur_sigma=2.0)(x)
    changed = (out - x).abs().flatten(1).amax(1) > 1e-3
    assert 0.35 < changed.float().mean() < 0.65
    out = BatchAugment(jpeg_prob=1.0, jpeg_quality=(30, 40))(x)
    assert ((out - x).abs().flatten(1).amax(1) > 1e-3).all() and out.min() >= 0 and out.max() <= 1


def test_thresholds_on_hand_made_scores() -> None:
    # negatives 0.1 0.2 0.3 0.6, positives 0.35 0.7 0.8 0.9: J is 0.75 calling FAKE above 0.3 and above 0.6 (the
    # stricter is kept); F1 is 8/9 above 0.3 (P 4/5, R 1) against 6/7 above 0.6
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.7, 0.8, 0.9])
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    assert youden_threshold(p, y) == pytest.approx(0.6)
    assert f1_threshold(p, y) == pytest.approx(0.3)
    # a clean separation between 0.4 and 0.45: both keep the highest REAL score as REAL and everything above FAKE
    p, y = np.array([0.1, 0.4, 0.45, 0.5, 0.55, 0.9]), np.array([0, 0, 1, 1, 1, 1])
    assert youden_threshold(p, y) == pytest.approx(0.4) and f1_threshold(p, y) == pytest.approx(0.4)


def test_robustness_table_with_a_known_scorer() -> None:
    """A scorer that calls an image FAKE when it is bright: blur keeps brightness, noise keeps it on average."""
    x = torch.cat(
        [torch.full((10, 3, 32, 32), 60, dtype=torch.uint8), torch.full((10, 3, 32, 32), 200, dtype=torch.uint8)]
    )
    labels = torch.tensor([0] * 10 + [1] * 10)

    def brightness(transform: Callable[[torch.Tensor], torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x if transform is None else transform(x)
        return batch.float().mean((1, 2, 3)) / 255, labels

    rows = robustness_table(brightness, 0.5, ["clean", "blur:1.0", "jpeg:50", "noise:0.02"])
    assert [r["condition"] for r in rows] == ["clean", "blur:1.0", "jpeg:50", "noise:0.02"]
    assert all(r["acc"] == 1.0 and r["auroc"] == 1.0 for r in rows)
    # the threshold is the caller's: above every brightness, all is REAL and half is right
    assert robustness_table(brightness, 0.9, ["clean"])[0]["acc"] == 0.5
    assert parse_condition("resize:0.5") == ("resize", 0.5)
    for bad in ("jpeg", "sharpen:2", "blur:x", "blur:nan", "blur:1e30", "resize:inf", "resize:0", "noise:inf"):
        with pytest.raises(ConfigError, match=f"robustness.conditions: '{bad}'"):
            parse_condition(bad)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, cifake_path: Path, cache_dir: Path) -> Path:
    """A real `experiment=cnn_baseline` run on the CIFAKE subset: 1 epoch, Youden's threshold, under a fresh
    outputs folder."""
    outputs = tmp_path_factory.mktemp("outputs")
    run = outputs / "train" / "runs" / "r1"
    cfg = subset_train_config(
        cifake_path, cache_dir, run, "experiment=cnn_baseline", "trainer.max_epochs=1", "model.threshold=youden"
    )
    train(cfg)
    return run


@pytest.fixture(scope="module")
def eval_run(trained_run: Path) -> Path:
    out = trained_run.parents[2] / "eval" / "runs" / "e1"
    evaluate_run(trained_run, out, "robustness.enabled=true", "robustness.conditions=[clean,jpeg:50,blur:1.0]")
    return out


def test_eval_report_files_and_thresholds(eval_run: Path) -> None:
    report = eval_run / "report"
    for name in ("confusion_matrix", "roc", "precision_recall", "reliability", "mistakes", "robustness"):
        png = report / f"{name}.png"
        assert png.stat().st_size > 5000, name
        assert Image.open(png).size[0] > 200
    summary = metrics_json(report)
    assert summary["n"] == 1000 and 0.5 < summary["auroc"] <= 1 and 0 <= summary["ece"] < 0.5
    assert set(summary["at_threshold"]) == {"0.5", "youden", "f1"}
    assert 0 < summary["at_threshold"]["youden"]["threshold"] < 1
    for m in summary["at_threshold"].values():
        assert {"precision_REAL", "recall_FAKE", "f1_FAKE", "acc"} <= set(m)
    record = metrics_json(eval_run)
    # one scorer and one decision rule: the selected threshold's row and the clean robustness row are test/acc
    assert record["thresholds"]["selected"] == "youden" and record["thresholds"]["source"] == "checkpoint"
    assert record["report"]["at_threshold"]["youden"]["acc"] == record["metrics"]["test/acc"]
    assert [r["condition"] for r in record["robustness"]] == ["clean", "jpeg:50", "blur:1.0"]
    assert record["robustness"][0]["acc"] == record["metrics"]["test/acc"]
    assert "| jpeg:50 |" in (report / "robustness.md").read_text()
    assert "| youden |" in (report / "report.md").read_text()


def test_eval_reproduces_the_test_metrics_of_training(trained_run: Path, eval_run: Path) -> None:
    """With the checkpoint's own (Youden) threshold, eval gives the end-of-training test metrics to the last digit,
    and its stored thresholds are those the training run chose on its validation split."""
    trained = metrics_json(trained_run)
    evaluated = metrics_json(eval_run)
    test = {k: v for k, v in trained["metrics"].items() if k.startswith("test/")}
    assert {"test/acc", "test/auroc", "test/threshold", "test/loss"} <= set(test)
    assert {k: evaluated["metrics"][k] for k in test} == test
    assert evaluated["thresholds"]["youden"] == trained["metrics"]["val/threshold_youden"] == test["test/threshold"]
    assert evaluated["thresholds"]["f1"] == trained["metrics"]["val/threshold_f1"]


def test_eval_refit_thresholds(trained_run: Path, tmp_path: Path) -> None:
    """thresholds=refit fits Youden and F1 again on the validation split, and the test metrics use the refit one;
    the same data as training's validation gives back the same thresholds. A wrong value is one line."""
    metrics = evaluate_run(trained_run, tmp_path, "thresholds=refit", "report=false")
    record = metrics_json(tmp_path)
    trained = metrics_json(trained_run)["metrics"]
    assert record["thresholds"]["source"] == "refit"
    assert record["thresholds"]["youden"] == pytest.approx(trained["val/threshold_youden"])
    assert metrics["test/threshold"] == pytest.approx(record["thresholds"]["youden"])
    with pytest.raises(ConfigError, match="thresholds=validation: use checkpoint"):
        evaluate_run(trained_run, tmp_path, "thresholds=validation")


def test_results_table_from_run_files(trained_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # a newer run of the same experiment that diverged, as fakedetect recorded it before refusing to: no result
    diverged = trained_run.parent / "diverged"
    diverged.mkdir()
    record = metrics_json(trained_run)
    record["metrics"] |= {"train/loss": math.nan, "val/loss": math.nan, "test/acc": 0.5}
    (diverged / "metrics.json").write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING):
        records = collect(trained_run.parents[2])
    shutil.rmtree(diverged)
    assert f"leaving out {diverged / 'metrics.json'}: train/loss, val/loss NaN or infinite" in caplog.text
    assert [r["experiment"] for r in records] == ["cnn_baseline"] and records[0]["run"] == str(trained_run)
    acc = metrics_json(trained_run)["metrics"]["test/acc"]
    text = table(records)
    assert f"{100 * acc:.2f}%" in text and "95.08%" in text and "| 1800 |" in text
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:start -->\nold\n<!-- results:end -->\nrest\n")
    update_readme(readme, text)
    assert "old" not in readme.read_text() and "cnn_baseline" in readme.read_text()
    assert readme.read_text().endswith("<!-- results:end -->\nrest\n")


def test_notebook_executes_on_real_outputs(trained_run: Path, eval_run: Path) -> None:
    outputs = trained_run.parents[2]
    study = optuna.create_study(study_name="tiny", storage=f"sqlite:///{outputs / 'tiny.db'}")
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True) * 10, n_trials=3)
    nb = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    os.environ["FAKEDETECT_OUTPUTS"] = str(outputs)
    try:
        nbclient.NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
        ).execute()
    finally:
        del os.environ["FAKEDETECT_OUTPUTS"]
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "1 eval reports" in text and "1 studies" in text and "tiny 3 trials" in text
    assert "2 runs with per-source results" in text  # the training run's and the eval's
    assert sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])) >= 3


def _jpeg_bytes(color: tuple[int, int, int], size: int = 32, quality: int = 95) -> bytes:
    arr = np.zeros((size, size, 3), np.uint8)
    arr[: size // 2] = color
    arr[size // 2 :] = tuple(255 - c for c in color)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_audit_counts_planted_duplicates_and_excludes_them(tmp_path: Path) -> None:
    root = tmp_path / "data"
    colors = [(i * 20, 255 - i * 20, (i * 70) % 256) for i in range(12)]
    for split in ("train", "test"):
        for cls in ("REAL", "FAKE"):
            (root / split / cls).mkdir(parents=True)
    for i, c in enumerate(colors[:8]):
        (root / "train" / ("REAL" if i % 2 else "FAKE") / f"{i}.jpg").write_bytes(_jpeg_bytes(c))
    for i, c in enumerate(colors[8:]):
        (root / "test" / ("REAL" if i % 2 else "FAKE") / f"{i}.jpg").write_bytes(_jpeg_bytes(c))
    # byte-identical: a test image copied into train; near-identical: a train image re-encoded at another quality
    shutil.copy(root / "test" / "FAKE" / "0.jpg", root / "train" / "FAKE" / "copy_of_test.jpg")
    (root / "train" / "REAL" / "requality.jpg").write_bytes(_jpeg_bytes(colors[1], quality=80))
    (root / "train" / "REAL" / "bigger.png").write_bytes(_png(64, 48))
    result = audit(str(root), ["REAL", "FAKE"], tmp_path / "audit", near_distance=0, workers=1, figure=True)
    assert result["images"] == 15
    assert result["byte_identical"]["groups"] == 1 and result["byte_identical"]["train_test_groups"] == 1
    assert result["near_identical"]["groups"] >= 2 and result["near_identical"]["within"].get("train", 0) >= 1
    assert result["width"]["max"] == 64 and result["area_outliers_iqr"]["above"] >= 1
    excluded = (tmp_path / "audit" / "exclude_train.txt").read_text().split()
    assert "train/FAKE/copy_of_test.jpg" in excluded and "train/REAL/requality.jpg" in excluded
    assert (tmp_path / "audit" / "sizes.png").exists()
    assert "byte-identical" in (tmp_path / "audit" / "audit.md").read_text()
    kept = ImageDataModule(
        str(root),
        resolution=16,
        val_fraction=0.0,
        cache_dir=str(tmp_path / "c"),
        exclude=str(tmp_path / "audit" / "exclude_train.txt"),
        decode_workers=1,
    )
    kept.setup()
    assert len(kept.splits["train"]) == 11 - len(excluded)


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_hamming_groups_join_within_distance() -> None:
    h = np.array([0b1111, 0b1110, 0xF0F0, 0xF0F0, 1 << 63, (1 << 63) | 1, 12345678], dtype=np.uint64)
    assert sorted(map(sorted, hamming_groups(h, 0))) == [[2, 3]]
    assert sorted(map(sorted, hamming_groups(h, 1))) == [[0, 1], [2, 3], [4, 5]]
