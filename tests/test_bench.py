"""`python -m fakedetect.bench`: a tiny real run writes its Markdown and JSON report."""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from fakedetect.benchmarks.throughput import Span, Utilisation, measure_row, nvidia_smi_reader
from fakedetect.utils.errors import ConfigError
from tests.conftest import assert_one_line, compose_config, run_command


def run_bench(*args: str, cache_dir: Path, timeout: float) -> None:
    """A `python -m fakedetect.bench` run on the session's decode cache, one thread, that must succeed."""
    env = {**os.environ, "FAKEDETECT_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    result = run_command("bench", *args, env=env, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]


def test_bench_reports_throughput_ratio_and_time_to_accuracy(
    cifake_path: Path, cache_dir: Path, tmp_path: Path
) -> None:
    run_bench(
        f"data.root={cifake_path}",
        "data.train_limit=1000",
        "data.test_limit=500",
        "models=[mlp]",
        "warmup_steps=2",
        "timed_steps=4",
        "repeats=2",
        "measure_decode=false",
        "trainer.accelerator=cpu",
        f"report_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "time_to_accuracy.experiment=cnnv3",
        "time_to_accuracy.targets=[0.0,1.01]",
        'time_to_accuracy.overrides=["data.train_limit=1000","data.test_limit=500","trainer.max_epochs=2"]',
        cache_dir=cache_dir,
        timeout=600,
    )
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
    assert "| mlp | 32 | 512 |" in markdown and "101.0%: not reached" in markdown


def test_gpu_suite_runs_every_stage_at_tiny_scale(cifake_path: Path, cache_dir: Path, tmp_path: Path) -> None:
    """Every stage of `suite=gpu` end to end on CPU at scale=tiny, so a GPU session spends no minutes on a crash."""
    run_bench(
        "suite=gpu",
        "suite.scale=tiny",
        "stage=open",
        "suite.deadline_s=3600",
        f"suite.report={tmp_path / 'bench-gpu'}",
        f"suite.run_dir={tmp_path / 'runs'}",
        f"data.root={cifake_path}",
        "trainer.accelerator=cpu",
        f"hydra.run.dir={tmp_path / 'run'}",
        cache_dir=cache_dir,
        timeout=900,
    )
    record = json.loads((tmp_path / "bench-gpu.json").read_text())
    stages = {s["stage"]: s for s in record["stages"]}
    assert list(stages) == ["1", "1b", "2", "3a", "3b", "4", "5"] and {s["scale"] for s in stages.values()} == {"tiny"}
    assert all(s["machine"] and s["date"] and s["commit"] for s in stages.values())
    for row in [
        *stages["1"]["runs"]["throughput"]["models"].values(),
        *stages["1b"]["runs"]["throughput"]["models"].values(),
    ]:
        assert row["time_ratio"] == row["plain_img_s"] / row["fakedetect_img_s"] > 0
        assert row["gpu_util_pct"] is None, "no GPU: no utilisation, not a made-up 0%"
    jpegs = stages["1b"]["runs"]["jpegs"]
    assert jpegs["files"] == 40 and [len(list((Path(jpegs["root"]) / c).glob("*.jpg"))) for c in ("REAL", "FAKE")] == [
        20,
        20,
    ], "the generated JPEGs split evenly into the two class folders"
    rows = stages["1b"]["runs"]["throughput"]["models"]
    assert {n: (r["model"], r["loader"], r["resolution"], r["fit"]) for n, r in rows.items()} == {
        "resnet18_memory_32": ("resnet18", "memory", 32, "squash"),
        "resnet18_stream_224": ("resnet18", "stream", 64, "resize_crop"),
        "resnet18_cached_224": ("resnet18", "cached", 64, "resize_crop"),
    }, "tiny: 64 px instead of 224"
    assert rows["resnet18_stream_224"]["train_images"] == rows["resnet18_cached_224"]["train_images"] == 38
    assert "decode_s" in rows["resnet18_cached_224"]["prepare_timings"], "fresh files: the cached row decodes them"
    assert [p["epoch"] for p in stages["2"]["runs"]["resnet18_fast"]["curve"]] == [1]
    for stage, name in (("2", "cnnv3"), ("3a", "cifake_top"), ("3b", "cifake_top_scratch"), ("4", "ae_youden")):
        run = stages[stage]["runs"][name]
        assert "error" not in run and 0.0 <= run["metrics"]["test/acc"] <= 1.0 and Path(run["ckpt_path"]).exists()
    assert [r["condition"] for r in stages["3a"]["runs"]["cifake_top"]["robustness"]["rows"]] == ["clean", "jpeg:50"]
    search = stages["4"]["runs"]["fakefinder_search"]
    assert "error" not in search and search["states"] == {"COMPLETE": 2}, "2 workers stop at the study's 2 trials"
    tables = stages["5"]["runs"]["robustness"]["tables"]
    assert {n: t["checkpoint"] for n, t in tables.items()} == {
        "cifake_top": "earlier run",
        "cifake_top_scratch": "earlier run",
        "cnnv3": "earlier run",
        "resnet18_fast": "trained again",
    }, "time to accuracy keeps no checkpoint: stage 5 trains it"
    assert all(len(t["rows"]) == 2 for t in tables.values())
    markdown = (tmp_path / "bench-gpu.md").read_text()
    assert "## Stage 5" in markdown and "| resnet18_stream_224 | 64 | 4 |" in markdown
    assert "| condition | cifake_top | cifake_top_scratch | cnnv3 | resnet18_fast |" in markdown


def test_gpu_suite_unknown_stage_is_one_line(tmp_path: Path) -> None:
    result = run_command(
        "bench",
        "suite=gpu",
        "stage=9",
        f"suite.report={tmp_path / 'bench-gpu'}",
        f"hydra.run.dir={tmp_path}",
        timeout=300,
    )
    assert assert_one_line(result) == "error: stage=9: give a stage of suite gpu (1, 1b, 2, 3a, 3b, 4, 5), next or open"


# JSON of the wrong shape, of another shape, or none: the same one line, not a traceback
@pytest.mark.parametrize("text", ['{"stages": 3}', "[1, 2]", "{not json"])
def test_gpu_suite_record_that_is_not_one_is_a_config_error(text: str, tmp_path: Path) -> None:
    from fakedetect.benchmarks.suite import load

    path = tmp_path / "bench-gpu.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="not a suite record .* move it away"):
        load(path)


def test_gpu_suite_search_past_its_deadline_is_reported_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers still running at the deadline are all killed, and the run says the deadline stopped it (not the
    exit code of a worker that was killed)."""
    from fakedetect.benchmarks.suite_runs import search

    slow = tmp_path / "python"
    slow.write_text("#!/bin/sh\nexec sleep 60\n")
    slow.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(slow))
    cfg = OmegaConf.create({"data": {"root": "x"}, "trainer": {"accelerator": "cpu", "precision": "32-true"}})
    run = OmegaConf.create({"overrides": [], "study": "s", "trials": 2, "workers": 2})
    start = time.monotonic()
    result = search(cfg, run, tmp_path / "search", 1.0, {})
    assert time.monotonic() - start < 20
    assert result["error"] == "stopped at the stage's deadline after 1 s" and result["states"] == {}


def test_gpu_suite_without_a_deadline_caps_nothing(tmp_path: Path) -> None:
    """The shipped suite knows no machine's time limit: with none given (null), no training is capped and no
    process is given a timeout; the caller's deadline (suite.deadline_s=S) caps both."""
    from fakedetect.benchmarks.suite_runs import max_time, timeout

    assert compose_config("bench", ["suite=gpu"], tmp_path).suite.deadline_s is None
    assert max_time(math.inf) == [] and timeout(math.inf) is None
    assert max_time(3725.5) == ["++trainer.max_time=00:01:02:05"] and timeout(0.2) == 1


def test_utilisation_averages_the_readings_inside_a_timed_span() -> None:
    values = iter(range(10_000))
    with Utilisation(lambda: float(next(values)), interval=0.005) as gpu:
        time.sleep(0.1)
    times = [t for t, _ in gpu.samples]
    assert len(times) >= 5 and gpu.error is None
    assert gpu.mean(Span(0.0, times[2], times[4])) == statistics.fmean([2.0, 3.0, 4.0])
    assert gpu.mean(Span(0.0, times[0], times[1]), Span(0.0, times[4], times[4])) == statistics.fmean(
        [0.0, 1.0, 4.0]
    ), "a loop's repeats: the readings inside any of its spans"
    assert gpu.mean(Span(0.0, times[-1] + 1, times[-1] + 2)) is None, "no reading inside: unknown, not 0%"


def test_nvidia_smi_reader_reads_one_gpu_and_a_failing_one_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\necho 37\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert nvidia_smi_reader("GPU-1234")() == 37.0
    assert "--id=GPU-1234 --query-gpu=utilization.gpu" in (tmp_path / "args").read_text()
    smi.write_text("#!/bin/sh\necho 'No devices were found' >&2\nexit 6\n")
    with Utilisation(nvidia_smi_reader("GPU-1234"), interval=0.005) as gpu:
        time.sleep(0.05)
    assert gpu.samples == [] and "CalledProcessError" in gpu.error


def test_bench_row_with_an_unknown_key_is_a_config_error() -> None:
    cfg = OmegaConf.create({"warmup_steps": 1, "timed_steps": 1, "per_model": {"x": {"data_conifg": "folder"}}})
    with pytest.raises(ConfigError, match=r"per_model.x: unknown key\(s\) \['data_conifg'\]; a row takes"):
        measure_row(cfg, "x", torch.device("cpu"))
