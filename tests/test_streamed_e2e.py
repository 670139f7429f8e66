"""The streamed path end to end: train -> eval (report, robustness, per-source table) -> gradcam -> predict on a
folder of synthetic images of several sizes, formats and sources, decoded in DataLoader workers."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fakedetect.eval import evaluate
from fakedetect.gradcam import gradcam
from fakedetect.predict import predict
from fakedetect.train import train
from fakedetect.utils.errors import ConfigError
from tests.conftest import QUIET, compose_config, event_tags, metrics_json
from tests.synthetic import SOURCES, write_tree

STREAM = [
    "data=folder",
    "data.resolution=48",
    "data.fit=resize_crop",
    "data.batch_size=16",
    "data.eval_batch_size=32",
    "data.num_workers=1",
]


def test_streamed_train_eval_gradcam_predict(tmp_path: Path, cache_dir: Path) -> None:
    data = write_tree(tmp_path / "data")
    run = tmp_path / "train"
    trained = train(
        compose_config(
            "train",
            [
                *STREAM,
                f"data.root={data}",
                f"data.cache_dir={cache_dir}",
                "trainer=cpu",
                "trainer.max_epochs=1",
                *QUIET,
                "model.net.n_layers=2",
            ],
            run,
        )
    )
    record = metrics_json(run)
    assert record["images"] == {"train": 44, "val": 4, "test": 24}  # val: 10% of each class of train; test as given
    assert {r["source"] for r in record["per_source"]} == {*SOURCES, "all"}
    assert trained["test/acc"] > 0.6  # the classes are learnable: not chance

    # eval on two test sets in one run: the tree's own test split, and a folder without splits evaluated whole
    whole = write_tree(tmp_path / "whole", {"": 2}, splits=("",))
    out = tmp_path / "eval"
    sets = f"test_sets={{synthetic:{{root:{data}}},whole:{{root:{whole},test_fraction:1.0}}}}"
    args = [f"ckpt_path={record['ckpt_path']}", "trainer=cpu", sets]
    metrics = evaluate(
        compose_config("eval", [*args, "robustness.enabled=true", "robustness.conditions=[clean,jpeg:50]"], out)
    )
    # the streamed test reproduced, per source too
    assert {k: metrics[f"synthetic/{k}"] for k in trained if k.startswith("test/")} == {
        k: v for k, v in trained.items() if k.startswith("test/")
    }
    with open(out / "report" / "per_source.csv") as f:
        rows = {(r["test_set"], r["source"]): r for r in csv.DictReader(f)}
    assert set(rows) == {(t, s) for t in ("synthetic", "whole") for s in (*SOURCES, "all")}
    assert rows["whole", "all"]["n"] == "8" and rows["synthetic", "all"]["n"] == "24"
    assert rows["whole", "gen_a"]["kind"] == "fake" and rows["synthetic", "camera"]["specificity"] != ""
    for name in (
        "synthetic/report.md",
        "synthetic/roc.png",
        "whole/mistakes.png",
        "whole/robustness.md",
        "per_source.md",
    ):
        assert (out / "report" / name).stat().st_size > 0, name
    evaluated = metrics_json(out)
    assert evaluated["test_sets"]["synthetic"]["robustness"][0]["acc"] == metrics["synthetic/test/acc"]
    assert len(evaluated["per_source"]) == 8 and metrics["whole/test/source/gen_b/recall"] >= 0
    assert metrics["whole/test/source/gen_b/recall"] == pytest.approx(float(rows["whole", "gen_b"]["recall"]))
    assert {f"test/source/{s}/acc" for s in SOURCES} <= event_tags(out / "tensorboard" / "whole", "scalars")
    with pytest.raises(ConfigError, match="thresholds=refit: the validation split of test set whole does not hold"):
        evaluate(compose_config("eval", [*args, "thresholds=refit", "report=false"], tmp_path / "refit"))

    png = gradcam(
        compose_config(
            "gradcam", [f"ckpt_path={record['ckpt_path']}", "n=4", "pool=24", "device=cpu"], tmp_path / "gradcam"
        )
    )
    assert png.stat().st_size > 10_000

    predictions = predict(
        compose_config(
            "predict",
            [f"ckpt_path={record['ckpt_path']}", f"input={data / 'test'}", "num_workers=0", "device=cpu"],
            tmp_path / "predict",
        )
    )
    assert len(predictions) == 24 and not any(r["error"] for r in predictions)
    assert {Path(r["path"]).relative_to(data / "test").parts[0] for r in predictions} == set(SOURCES)
    right = sum((r["label"] == "FAKE") == ("1_fake" in r["path"]) for r in predictions)
    assert right / len(predictions) > 0.6
