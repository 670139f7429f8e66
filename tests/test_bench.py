"""`python -m fakedetect.bench`: a tiny real run writes its Markdown and JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_bench_reports_throughput_ratio_and_time_to_accuracy(cifake_path: Path, cache_dir: Path,
                                                             tmp_path: Path) -> None:
    command = [sys.executable, "-m", "fakedetect.bench", f"data.root={cifake_path}", "data.train_limit=1000",
               "data.test_limit=500", "models=[mlp]", "warmup_steps=2", "timed_steps=4", "repeats=2",
               "measure_decode=false",
               "trainer.accelerator=cpu", f"report_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}",
               "time_to_accuracy.experiment=cnnv3", "time_to_accuracy.targets=[0.0,1.01]",
               'time_to_accuracy.overrides=["data.train_limit=1000","data.test_limit=500","trainer.max_epochs=2"]']
    env = {**os.environ, "FAKEDETECT_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench-cpu.json").read_text())
    mlp = report["models"]["mlp"]
    assert mlp["fakedetect_img_s"] > 0 and mlp["plain_img_s"] > 0
    assert mlp["time_ratio"] == mlp["plain_img_s"] / mlp["fakedetect_img_s"]
    assert mlp["fakedetect_img_s"] == sum(mlp["rates"]["fakedetect"]) / 2, "the median of two runs"
    tta = report["time_to_accuracy"]
    first = tta["curve"][0]
    assert tta["train_images"] == 900 and tta["test_images"] == 500 and 0.0 <= first["test_acc"] <= 1.0
    assert [p["epoch"] for p in tta["curve"]] == [1, 2], "101% is never reached: every epoch runs"
    assert tta["reached_s"] == {"0.000": first["train_s"], "1.010": None}
    markdown = (tmp_path / "bench-cpu.md").read_text()
    assert "| mlp | 32 | 128 |" in markdown and "101.0%: not reached" in markdown
