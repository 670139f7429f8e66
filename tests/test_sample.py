"""The CIFAKE sample inside the package: small, stratified, reproducible, and never mistaken for CIFAKE."""

from __future__ import annotations

import os
import re
from pathlib import Path

from fakedetect.data.sources import Source
from fakedetect.reporting.results import collect, table
from fakedetect.tools.download import SAMPLE, build_sample, sha256_of
from tests.conftest import metrics_json, run_command


def test_sample_is_small_stratified_and_licensed() -> None:
    assert SAMPLE.stat().st_size < 2_000_000
    listing = Source.open(SAMPLE).list(["REAL", "FAKE"])
    counts = {(split, label): 0 for split in ("train", "test") for label in (0, 1)}
    for e in listing.entries:
        counts[e.split, e.label] += 1
    assert counts == {("train", 0): 600, ("train", 1): 600, ("test", 0): 200, ("test", 1): 200}
    assert not listing.ignored
    notes = (SAMPLE.parent / "README.md").read_text()
    assert sha256_of(SAMPLE) in notes and "Bird" in notes and "Krizhevsky" in notes
    assert "MIT License" in (SAMPLE.parent / "LICENSE").read_text()


def test_sample_rebuilds_byte_for_byte(cifake_path: Path, tmp_path: Path) -> None:
    assert sha256_of(build_sample(cifake_path, tmp_path / "sample.zip")) == sha256_of(SAMPLE)


def test_sample_run_in_an_empty_folder_says_sample(tmp_path: Path) -> None:
    """The README's first run, from a folder with nothing in it: its folder, metrics and results row say sample."""
    env = {k: v for k, v in os.environ.items() if k not in ("CIFAKE", "PROJECT_ROOT", "FAKEDETECT_CACHE")}
    run = run_command(
        "train",
        "data=cifake_sample",
        "experiment=cnn_baseline",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "callbacks.progress_bar=null",
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (folder,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    assert folder.name.endswith("-sample")
    record = metrics_json(folder)
    assert record["data"] == "cifake_sample" and record["images"] == {"train": 1080, "val": 120, "test": 400}
    (row,) = table(collect(tmp_path / "outputs")).splitlines()[2:]
    assert re.match(r"\| `cnn_baseline` \(sample\) \| .* \| 1080 \(sample\) \|", row), row
