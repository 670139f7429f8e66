"""test/acc_dedup: the test split without its byte-identical copies of train or val files, in both loaders, in
train and eval, agreeing with the data audit."""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from fakedetect.data.datamodule import ImageDataModule
from fakedetect.eval import evaluate
from fakedetect.metrics.thresholds import decide
from fakedetect.reporting.results import table
from fakedetect.tools.audit.dataset import audit
from fakedetect.train import train
from fakedetect.utils.checkpoint import load_trained
from tests.conftest import QUIET, compose_config, event_tags, metrics_json, predicted
from tests.test_data import CLASSES, _encode, _folder, _module, _random_png, _split_files, _split_folder, _write_tree

# the test files of `_planted` that repeat a train file byte for byte (one of them under the other class)
COPIES = ["test/FAKE/copy.png", "test/FAKE/cross.png", "test/REAL/copy.png"]


def _planted(root: Path, per_class: int = 8) -> Path:
    """Random PNGs with copies of train files planted in test, beside two near misses that must stay: a pair of
    copies within test only, and a train image's pixels encoded again with other bytes."""
    rng = np.random.default_rng(0)
    files = _split_files(rng, per_class)
    pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    files["train/FAKE/pixels.png"] = _encode(pixels, "PNG", compress_level=9)
    files["test/FAKE/pixels.png"] = _encode(pixels, "PNG", compress_level=1)
    files["test/REAL/copy.png"] = files["train/REAL/1.png"]
    files["test/FAKE/copy.png"] = files["train/FAKE/2.png"]
    files["test/FAKE/cross.png"] = files["train/REAL/3.png"]
    files["test/REAL/twin_a.png"] = files["test/REAL/twin_b.png"] = _random_png(rng)
    assert files["train/FAKE/pixels.png"] != files["test/FAKE/pixels.png"]
    return _write_tree(root, files)


def _marks(dm: ImageDataModule) -> np.ndarray:
    return dm.splits["test"].duplicates


def _removed(dm: ImageDataModule) -> list[str]:
    return sorted(n for n, d in zip(dm.test_names, _marks(dm), strict=True) if d)


@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_planted_copies_are_masked_and_left_out(loader: str, tmp_path: Path) -> None:
    root = _planted(tmp_path / "data")
    dm = _module(root, tmp_path / "cache", loader=loader, num_workers=0)
    assert _removed(dm) == COPIES and dm.duplicate_groups == 3
    images, labels, _, duplicates = (torch.cat(parts) for parts in zip(*dm.test_dataloader(), strict=True))
    images, labels = images[~duplicates], labels[~duplicates]  # what the deduplicated figures score
    assert len(labels) == len(dm.test_names) - 3
    assert labels.tolist() == dm.splits["test"].labels[~_marks(dm)].tolist()  # test order, copies left out
    if loader == "memory":
        assert np.array_equal(images.permute(0, 2, 3, 1).numpy(), dm.split_images("test")[~_marks(dm)])
    # the digests come back from the cache, the mask with them
    again = _module(root, tmp_path / "cache", loader=loader, num_workers=0)
    assert ("cache_load_s" in again.timings) if loader == "memory" else ("digest_s" not in again.timings)
    assert _removed(again) == COPIES


def test_decode_cache_without_digests_is_decoded_again(tmp_path: Path) -> None:
    root = _planted(tmp_path / "data")
    dm = _module(root, tmp_path / "cache")
    (_folder(dm) / "digests.npy").unlink()  # as a cache of an older version would lack it
    again = _module(root, tmp_path / "cache")
    assert "decode_s" in again.timings and _removed(again) == COPIES


def test_mask_matches_the_audit_and_its_exclusions_empty_it(tmp_path: Path) -> None:
    root = _planted(tmp_path / "data")
    result = audit(str(root), list(CLASSES), tmp_path / "audit", workers=1)
    assert result["byte_identical"]["train_test_groups"] == 3
    assert result["byte_identical"]["train_test_test_images"] == 3
    assert (tmp_path / "audit" / "test_copies_of_train.txt").read_text().splitlines() == COPIES
    # trained without the audit's exclusions, no test image has a train copy left
    dm = _module(root, tmp_path / "cache", exclude=str(tmp_path / "audit" / "exclude_train.txt"))
    assert not _marks(dm).any() and dm.duplicate_groups == 0


def test_stream_digests_follow_a_changed_file_and_survive_a_damaged_cache(tmp_path: Path) -> None:
    root = _planted(tmp_path / "data")
    cache = tmp_path / "cache"
    _module(root, cache, loader="stream")
    (root / "test" / "REAL" / "0.png").write_bytes((root / "train" / "REAL" / "5.png").read_bytes())
    changed = _module(root, cache, loader="stream")
    assert "digest_s" in changed.timings and _removed(changed) == sorted([*COPIES, "test/REAL/0.png"])
    for path in (cache / "digests").iterdir():
        path.write_text("{not json")
    again = _module(root, cache, loader="stream")
    assert "digest_s" in again.timings and _removed(again) == _removed(changed)


def _folder_train(root: Path, out: Path, cache: Path, *overrides: str) -> dict[str, float]:
    cfg = compose_config(
        "train",
        [
            f"data.root={root}",
            f"data.cache_dir={cache}",
            "data.decode_workers=1",
            "data.val_fraction=0.25",
            "data.batch_size=8",
            "trainer=cpu",
            "trainer.max_epochs=2",
            *QUIET,
            *overrides,
        ],
        out,
    )
    return train(cfg)


def test_without_copies_acc_dedup_is_test_acc(tmp_path: Path) -> None:
    root = _split_folder(tmp_path / "data", per_class=12, seed=1)
    metrics = _folder_train(root, tmp_path / "run", tmp_path / "cache", "model.threshold=youden")
    assert metrics["test/n_dedup_removed"] == 0 and metrics["test/n_dedup_groups"] == 0
    assert metrics["test/acc_dedup"] == metrics["test/acc"]
    assert metrics["test/auroc_dedup"] == metrics["test/auroc"]


def test_a_test_split_of_copies_only_has_no_acc_dedup(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(2)
    files = {f"train/{cls}/{i}.png": _random_png(rng) for cls in CLASSES for i in range(8)}
    root = _write_tree(tmp_path / "data", {**files, **{n.replace("train/", "test/"): b for n, b in files.items()}})
    metrics = _folder_train(root, tmp_path / "run", tmp_path / "cache")
    assert metrics["test/n_dedup_removed"] == 16 and "test/acc_dedup" not in metrics and "test/acc" in metrics
    assert "every test image has a byte-identical copy in train or val" in caplog.text


def test_planted_copies_change_acc_dedup_as_scored_by_hand(tmp_path: Path) -> None:
    root = _planted(tmp_path / "data")
    metrics = _folder_train(root, tmp_path / "run", tmp_path / "cache", "model.threshold=youden")
    record = metrics_json(tmp_path / "run")["metrics"]
    assert record["test/acc_dedup"] == metrics["test/acc_dedup"] and record["test/n_dedup_removed"] == 3
    # the same figure from the whole test split, scored and decided by hand, its copies dropped afterwards
    ckpt = metrics_json(tmp_path / "run")["ckpt_path"]
    trained = load_trained(ckpt)
    dm = trained.datamodule
    dm.setup("test")
    probs, labels = predicted(trained.model, dm.test_dataloader())
    kept = torch.from_numpy(~_marks(dm))
    correct = decide(probs, trained.model.decision_threshold) == labels
    assert metrics["test/acc"] == pytest.approx(correct.float().mean().item(), abs=1e-6)
    assert metrics["test/acc_dedup"] == pytest.approx(correct[kept].float().mean().item(), abs=1e-6)
    # eval of the checkpoint reports the same, and a test cut short scores only the images it saw
    evaluated = evaluate(
        compose_config(
            "eval",
            [f"ckpt_path={ckpt}", "trainer=cpu", "report=false", f"data.cache_dir={tmp_path / 'cache'}"],
            tmp_path / "eval",
        )
    )
    assert evaluated["test/acc_dedup"] == metrics["test/acc_dedup"]
    short = evaluate(
        compose_config(
            "eval",
            [
                f"ckpt_path={ckpt}",
                "trainer=cpu",
                "data.eval_batch_size=4",
                "+trainer.limit_test_batches=2",
                "robustness.enabled=true",
                "robustness.conditions=[clean,blur:1.0]",
            ],
            tmp_path / "short",
        )
    )
    assert short["test/n_dedup_removed"] == _marks(dm)[:8].sum()
    assert short["test/acc_dedup"] == pytest.approx(correct[:8][kept[:8]].float().mean().item(), abs=1e-6)
    # the report, the per-source table and the robustness rows cover the same 8 images as test/acc
    record = metrics_json(tmp_path / "short")
    assert record["report"]["n"] == 8 and record["per_source"][-1]["n"] == 8
    assert record["report"]["at_threshold"]["youden"]["acc"] == short["test/acc"] == record["robustness"][0]["acc"]


def _archive_digests(path: Path) -> dict[str, str]:
    """Every member's SHA-1, read straight from the archive (not through fakedetect)."""
    with tarfile.open(path, mode="r|gz") as tar:
        return {m.name: hashlib.sha1(tar.extractfile(m).read()).hexdigest() for m in tar if m.isfile()}


def test_cifake_subset_training_logs_dedup_metrics(
    train_cfg: Callable[..., DictConfig], cifake_path: Path, cache_dir: Path
) -> None:
    cfg = train_cfg("trainer.max_epochs=1", "+trainer.limit_train_batches=4")
    metrics = train(cfg)
    assert 0 < metrics["test/acc_dedup"] <= 1 and 0 < metrics["test/auroc_dedup"] <= 1
    # the mask's size is what the archive's own bytes say about this subset's test and train images
    dm = ImageDataModule(str(cifake_path), cache_dir=str(cache_dir), train_limit=2000, test_limit=1000)
    dm.setup()
    digests = _archive_digests(cifake_path)
    data = dm.decoded()
    pool = {digests[n] for n, s in zip(data.names, data.splits, strict=True) if s == "train"}
    copies = [n for n in dm.test_names if digests[n] in pool]
    assert metrics["test/n_dedup_removed"] == len(copies) == _marks(dm).sum()
    assert (metrics["test/acc_dedup"] == metrics["test/acc"]) == (not copies)
    # the whole archive: CIFAKE's 378 test files with a train copy, counted without fakedetect
    train_files = {d for n, d in digests.items() if n.startswith("train/")}
    assert sum(d in train_files for n, d in digests.items() if n.startswith("test/")) == 378
    assert {"test/acc_dedup", "test/auroc_dedup", "test/n_dedup_removed", "hp/test_acc_dedup"} <= event_tags(
        Path(cfg.paths.output_dir) / "tensorboard", "scalars"
    )
    record = metrics_json(Path(cfg.paths.output_dir))
    row = table([{**record, "experiment": "cnnv3", "train_images": 1800}])
    assert f"| {100 * metrics['test/acc']:.2f}% | {100 * metrics['test/acc_dedup']:.2f}% |" in row
    del record["metrics"]["test/acc_dedup"]  # a run from before the metric
    assert f"| {100 * metrics['test/acc']:.2f}% | n/a |" in table(
        [{**record, "experiment": "cnnv3", "train_images": 1800}]
    )
