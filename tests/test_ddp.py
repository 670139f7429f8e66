"""`trainer=ddp_sim`: two CPU processes (gloo) run the distributed code paths end to end; their figures cover every
test image once, as one process's do."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import lightning as L
import pytest

from fakedetect.data.datamodule import ImageDataModule
from fakedetect.train import train
from fakedetect.utils.errors import ConfigError
from tests.conftest import QUIET, ROOT, SUBSET, compose_config, evaluate_run, metrics_json, run_command

SAMPLE_ZIP = ROOT / "fakedetect" / "data" / "sample" / "cifake_sample.zip"
# per split and class folder, how many of the packaged sample's CIFAKE images the odd subset takes: a test split of
# 101, which two processes cannot share evenly (Lightning's DistributedSampler padded it with a repeat)
ODD = {"train/REAL": 60, "train/FAKE": 60, "test/REAL": 51, "test/FAKE": 50}
# what must come out the same from two processes as from one
SAME = ("test/acc", "test/auroc", "test/loss", "test/acc_dedup", "test/precision", "test/recall", "test/f1")


def odd_subset(root: Path) -> Path:
    """Real CIFAKE images from the packaged sample, in a folder of the ODD counts."""
    with zipfile.ZipFile(SAMPLE_ZIP) as archive:
        for folder, count in ODD.items():
            names = sorted(n for n in archive.namelist() if n.startswith(f"{folder}/") and not n.endswith("/"))
            for name in names[:count]:
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(archive.read(name))
    return root


def test_two_processes_score_every_test_image_once(tmp_path: Path) -> None:
    """`trainer=ddp_sim` (2 processes, gloo) with the stream loader on a test split of 101: metrics.json's overall,
    deduplicated and per-source figures equal a one-process eval of the same checkpoint (they counted 102 images
    when Lightning's sampler padded the shares, and test/loss was 1% off: Lightning averaged the image counts as
    integers)."""
    data = odd_subset(tmp_path / "odd")
    run = tmp_path / "ddp"
    env = {**os.environ, "FAKEDETECT_CACHE": str(tmp_path / "cache")}
    overrides = ["data.loader=stream", "data.num_workers=0", "data.batch_size=32", "data.eval_batch_size=50"]
    run_command(
        "train",
        f"data.root={data}",
        "trainer=ddp_sim",
        "trainer.max_epochs=1",
        *overrides,
        *QUIET,
        f"hydra.run.dir={run}",
        env=env,
        check=True,
        timeout=600,
    )
    ddp = metrics_json(run)
    one = tmp_path / "one"
    single = evaluate_run(run, one, f"data.cache_dir={tmp_path / 'cache'}", "data.loader=memory")
    assert ddp["images"]["test"] == 101
    assert {r["source"]: r["n"] for r in ddp["per_source"]} == {"REAL": 51, "FAKE": 50, "all": 101}
    assert ddp["per_source"] == metrics_json(one)["per_source"]
    for key in (*SAME, *(k for k in single if k.startswith("test/source/"))):
        assert ddp["metrics"][key] == pytest.approx(single[key], abs=1e-6), key


@pytest.mark.slow
def test_two_process_eval_of_every_loader_equals_one_process(tmp_path: Path) -> None:
    """eval on 2 processes of one checkpoint, on the odd split read by the memory, cached and stream loaders (three
    test sets): every set's figures and per-source rows equal a one-process eval's."""
    data, cache = odd_subset(tmp_path / "odd"), tmp_path / "cache"
    run = tmp_path / "run"
    train(
        compose_config(
            "train",
            [f"data.root={data}", f"data.cache_dir={cache}", "trainer=cpu", "trainer.max_epochs=1", *QUIET],
            run,
        )
    )
    sets = (
        "test_sets={memory:{loader:memory},cached:{loader:cached,num_workers:0},stream:{loader:stream,num_workers:0}}"
    )
    env = {**os.environ, "FAKEDETECT_CACHE": str(cache)}
    two = tmp_path / "two"
    ckpt = metrics_json(run)["ckpt_path"]
    common = [sets, "data.eval_batch_size=50"]
    run_command(
        "eval",
        f"ckpt_path={ckpt}",
        "trainer=ddp_sim",
        *common,
        f"hydra.run.dir={two}",
        env=env,
        check=True,
        timeout=600,
    )
    single = evaluate_run(run, tmp_path / "one", *common)
    ddp = metrics_json(two)
    assert {r["test_set"] for r in ddp["per_source"] if r["source"] == "all" and r["n"] == 101} == {
        "memory",
        "cached",
        "stream",
    }
    assert ddp["per_source"] == metrics_json(tmp_path / "one")["per_source"]
    for key, value in single.items():
        assert ddp["metrics"][key] == pytest.approx(value, abs=1e-6), key


def test_a_split_smaller_than_the_processes_is_one_line(tmp_path: Path) -> None:
    """A process with no batch of a split would wait for the others for ever: refused, naming the split."""
    data = odd_subset(tmp_path / "odd")
    module = ImageDataModule(str(data), cache_dir=str(tmp_path / "cache"), test_limit=2)
    module.trainer = L.Trainer(accelerator="cpu", devices=3, strategy="ddp", logger=False)  # not launched
    module.setup("test")
    with pytest.raises(ConfigError, match=r"the test split holds 2 images, fewer than the run's 3 processes"):
        module.test_dataloader()


# Same global batch (2 x 64 against 1 x 128) and epochs; different sample order, so not bit-identical:
# on this 2-epoch, 1,800-image run the two test accuracies must agree within 8 points.
TOLERANCE = 0.08


def run(tmp: Path, cifake: Path, cache: Path, *overrides: str) -> tuple[dict, str]:
    """The run's metrics.json and its stderr."""
    env = {**os.environ, "CIFAKE": str(cifake), "FAKEDETECT_CACHE": str(cache)}
    result = run_command(
        "train",
        *SUBSET,
        "trainer.max_epochs=2",
        *QUIET,
        f"hydra.run.dir={tmp}",
        *overrides,
        env=env,
        check=True,
        timeout=600,
    )
    return metrics_json(tmp), result.stderr


@pytest.mark.slow
def test_ddp_sim_matches_single_process(cifake_path: Path, cache_dir: Path, tmp_path: Path) -> None:
    ddp, ddp_log = run(tmp_path / "ddp", cifake_path, cache_dir, "trainer=ddp_sim", "data.batch_size=64")
    single, _ = run(tmp_path / "single", cifake_path, cache_dir, "trainer=cpu", "data.batch_size=128")
    assert ddp["epochs"] == single["epochs"] == 2
    assert ddp["images"] == single["images"]
    assert abs(ddp["metrics"]["test/acc"] - single["metrics"]["test/acc"]) < TOLERANCE, (ddp, single)
    assert ddp["metrics"]["test/acc"] > 0.6
    assert list((tmp_path / "ddp" / "checkpoints").glob("*.ckpt")), "rank 0 saves checkpoints"
    assert "sync_dist" not in ddp_log, "epoch-level logs must be reduced across ranks"


@pytest.mark.parametrize("option", ["ddp", "ddp_sim"])
def test_ddp_configs_name_a_ddp_strategy(option: str) -> None:
    text = (ROOT / "conf" / "trainer" / f"{option}.yaml").read_text()
    assert "strategy: ddp" in text
