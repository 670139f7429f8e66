"""`trainer=ddp_sim`: two CPU processes (gloo) run the distributed code paths end to end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import QUIET, ROOT, SUBSET, metrics_json, run_command

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
