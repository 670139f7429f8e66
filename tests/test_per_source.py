"""Per-source results (each generator against all real images, specificity per real source), the eval test-set
syntax, and the cross-generator table."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from fakedetect.eval import named_test_sets
from fakedetect.metrics.scores import Scores
from fakedetect.reporting.cross_generator import write_table
from fakedetect.reporting.per_source import flat_metrics, source_rows, write_per_source
from fakedetect.utils.errors import ConfigError
from tests.conftest import QUIET, assert_one_line, compose_config, metrics_json, run_command
from tests.synthetic import write_tree

NAMES = ["camera", "gen_a", "gen_b", "unused"]


def _scores() -> Scores:
    # camera: 4 reals, one called FAKE; gen_a: 2 fakes, both caught; gen_b: 2 fakes, one caught
    probs = torch.tensor([0.1, 0.2, 0.3, 0.7, 0.9, 0.8, 0.4, 0.6])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    sources = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    return _with(probs, labels, sources)


def _with(probs: torch.Tensor, labels: torch.Tensor, sources: torch.Tensor) -> Scores:
    """Scores of images none of which is a duplicate of a train file."""
    return Scores(probs, labels, sources, torch.zeros_like(labels, dtype=torch.bool))


def test_each_generator_against_all_reals_by_hand() -> None:
    rows = {r["source"]: r for r in source_rows(_scores(), NAMES, 0.5, "synthetic")}
    assert list(rows) == ["camera", "gen_a", "gen_b", "all"]  # a source without images has no row
    camera, gen_a, gen_b, everything = rows["camera"], rows["gen_a"], rows["gen_b"], rows["all"]
    assert camera["kind"] == "real" and camera["specificity"] == 0.75 and camera["recall"] is None
    # camera's 4 reals against all 4 fakes: 3 + 3 right; 14 of 16 (fake, real) pairs ordered
    assert camera["acc"] == 0.75 and camera["auroc"] == pytest.approx(14 / 16)
    # gen_a's 2 fakes against the 4 reals: 2 + 3 right; every pair ordered
    assert gen_a["kind"] == "fake" and gen_a["acc"] == pytest.approx(5 / 6) and gen_a["auroc"] == 1.0
    assert gen_a["recall"] == 1.0 and gen_a["specificity"] is None and (gen_a["n"], gen_a["n_real"]) == (2, 0)
    assert gen_b["acc"] == pytest.approx(4 / 6) and gen_b["auroc"] == pytest.approx(6 / 8) and gen_b["recall"] == 0.5
    assert everything["kind"] == "all" and everything["n"] == 8 and everything["acc"] == 0.75
    assert everything["recall"] == 0.75 and everything["specificity"] == 0.75
    assert all(r["test_set"] == "synthetic" for r in rows.values())
    metrics = flat_metrics(rows.values())
    assert metrics["test/source/gen_b/recall"] == 0.5 and "test/source/gen_a/specificity" not in metrics
    assert not any("/all/" in k for k in metrics)


def test_mixed_source_and_images_without_a_source() -> None:
    """A GenImage-style source (fakes and reals) gets its fakes' figures and its own reals' specificity; images
    from batches that carried no source count in the `all` row only."""
    probs = torch.tensor([0.9, 0.2, 0.6, 0.1, 0.8])
    labels = torch.tensor([1, 0, 0, 0, 1])
    sources = torch.tensor([0, 0, 0, 1, -1])
    rows = {r["source"]: r for r in source_rows(_with(probs, labels, sources), ["sdv4", "nature"], 0.5)}
    sdv4 = rows["sdv4"]
    assert sdv4["kind"] == "mixed" and (sdv4["n_fake"], sdv4["n_real"]) == (1, 2)
    assert sdv4["recall"] == 1.0 and sdv4["specificity"] == 0.5
    assert sdv4["acc"] == pytest.approx(3 / 4)  # its fake with all 3 reals: the real at 0.6 is wrong
    assert rows["all"]["n"] == 5 and rows["nature"]["auroc"] == 1.0


def test_one_class_pool_has_no_auroc_and_files_say_n_a(tmp_path: Path) -> None:
    rows = source_rows(_with(torch.tensor([0.9, 0.3]), torch.tensor([1, 1]), torch.tensor([0, 0])), ["gen"], 0.5)
    assert rows[0]["auroc"] is None and rows[0]["recall"] == 0.5
    write_per_source(tmp_path, rows)
    assert "| test | gen | fake | 2 | 2 | 0 | 0.5000 | n/a | 0.5000 | n/a |" in (tmp_path / "per_source.md").read_text()
    assert (tmp_path / "per_source.csv").read_text().splitlines()[0].startswith("test_set,source,kind,n")


def test_test_sets_typed_on_the_command_line(tmp_path: Path) -> None:
    typed = "test_sets={cifake:{root:/data/cifake.tar.gz},web60:{root:../shared/data/web60,test_fraction:1.0}}"
    cfg = compose_config("eval", ["ckpt_path=x", typed, "data.test_limit=10"], tmp_path)
    sets = named_test_sets(cfg)
    assert list(sets) == ["cifake", "web60"]
    assert sets["web60"]["root"] == "../shared/data/web60" and sets["web60"]["test_fraction"] == 1.0
    assert (
        sets["cifake"]["test_limit"] == 10
        and "root" not in named_test_sets(compose_config("eval", ["ckpt_path=x"], tmp_path))[None]
    )
    one = compose_config(
        "eval", ["ckpt_path=x", "+test_sets.web60.root=/w", "+test_sets.web60.test_fraction=1.0"], tmp_path
    )
    assert named_test_sets(one)["web60"] == {**named_test_sets(one)["web60"], "root": "/w", "test_fraction": 1.0}
    with pytest.raises(ConfigError, match="test_sets.web60=/w: give the set's data overrides"):
        named_test_sets(compose_config("eval", ["ckpt_path=x", "test_sets={web60:/w}"], tmp_path))
    with pytest.raises(ConfigError, match="test_sets.web60.rooot: not a data setting"):
        named_test_sets(compose_config("eval", ["ckpt_path=x", "test_sets={web60:{rooot:/w}}"], tmp_path))
    cfg.test_sets = {"../up": {"root": "/w"}}  # a name that would leave the report folder
    with pytest.raises(ConfigError, match=r"test_sets.../up: a set name is"):
        named_test_sets(cfg)
    # the command: checked before the checkpoint is read
    done = run_command("eval", "ckpt_path=missing.ckpt", "test_sets={web60:/w}", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line(done, "test_sets.web60=/w: give the set's data overrides, at least its root")


def _fake_run(folder: Path, trained_on: list[str] | None, acc: dict[str, float]) -> None:
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save({"data": {"train_sources": trained_on}}, folder / ".hydra" / "config.yaml")
    rows = [{"source": s, "kind": "fake", "acc": a, "auroc": a} for s, a in acc.items()]
    rows.append({"source": "camera", "kind": "real", "acc": 0.9, "auroc": 0.9})
    (folder / "metrics.json").write_text(json.dumps({"task": "train", "per_source": rows}))


def test_cross_generator_table_from_run_files(tmp_path: Path) -> None:
    _fake_run(tmp_path / "0", ["gen_a"], {"gen_a": 0.95, "gen_b": 0.55})
    _fake_run(tmp_path / "1", ["gen_b"], {"gen_a": 0.6, "gen_b": 0.9})
    text = write_table(tmp_path, tmp_path / "table")
    assert "| gen_a | 95.0 | 55.0 | 75.0 |" in text and "| gen_b | 60.0 | 90.0 | 75.0 |" in text
    assert "camera" not in text  # columns are generators only
    assert (tmp_path / "table" / "cross_generator.png").stat().st_size > 5000
    done = run_command("cross_generator", f"runs={tmp_path / 'table'}")
    assert_one_line(done, "no training run with per-source results under")
    with pytest.raises(ConfigError, match="no training run with per-source results under"):
        write_table(tmp_path / "table", tmp_path / "table")
    done = run_command("cross_generator", f"runs={tmp_path / 'missing'}")
    assert_one_line(done, "runs=", "missing: no such folder")


def test_cross_generator_multirun_at_cpu_scale(tmp_path: Path, cache_dir: Path) -> None:
    """The protocol's mechanics as a user runs them: one multirun over `data.train_sources`, then the table command
    on its folder (a tiny net, 32 px, one epoch: the figures mean nothing, the shape does)."""
    data = write_tree(tmp_path / "data", {"train": 6, "test": 4})
    sweep = tmp_path / "multirun"
    done = run_command(
        "train",
        "-m",
        "experiment=cross_generator",
        f"data.root={data}",
        "data.train_sources=[gen_a],[gen_b]",
        "model.net.name=test_resnet",
        "model.net.pretrained=false",
        "data.resolution=32",
        "data.num_workers=0",
        "data.val_fraction=0.25",
        f"data.cache_dir={cache_dir}",
        "trainer=cpu",
        "trainer.max_epochs=1",
        *QUIET,
        f"hydra.sweep.dir={sweep}",
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for run, trained_on in (("0", "gen_a"), ("1", "gen_b")):
        record = metrics_json(sweep / run)
        # train and val: that generator's fakes and every real image
        assert record["images"]["train"] + record["images"]["val"] == 6 + 6 * 2, record["images"]
        assert {r["source"] for r in record["per_source"]} == {"camera", "gen_a", "gen_b", "all"}, trained_on
    done = run_command("cross_generator", f"runs={sweep}", "metric=auroc")
    assert done.returncode == 0, done.stderr
    lines = (sweep / "cross_generator.md").read_text().splitlines()
    assert "| trained on | gen_a | gen_b | mean |" in lines
    assert sum(line.startswith(("| gen_a |", "| gen_b |")) for line in lines) == 2
    assert (sweep / "cross_generator.png").stat().st_size > 5000
