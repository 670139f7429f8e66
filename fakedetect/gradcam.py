"""`python -m fakedetect.gradcam ckpt_path=... [n=16]`: Grad-CAM overlays of test images, to PNG and TensorBoard."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from fakedetect.reporting.figures import log_figure
from fakedetect.reporting.gradcam import explain_test_images
from fakedetect.utils.app import command
from fakedetect.utils.builders import build_list
from fakedetect.utils.checkpoint import load_trained
from fakedetect.utils.errors import ConfigError, is_int

log = logging.getLogger(__name__)


def gradcam(cfg: DictConfig) -> Path:
    """Write the grid of n test images (hits and misses of both classes) and log it; returns the PNG path."""
    for key in ("n", "pool"):
        if not is_int(cfg[key]) or cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]} must be a positive whole number")
    trained = load_trained(cfg.ckpt_path, cfg.get("data"), cfg.get("trust"))
    fig = explain_test_images(
        trained.model,
        trained.datamodule,
        trained.model.decision_threshold,
        n=cfg.n,
        pool=cfg.pool,
        device=cfg.device,
    )
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=150)
    loggers = build_list(cfg.get("logger"))
    log_figure(loggers, "test/gradcam", fig, trained.global_step)
    for logger in loggers:
        logger.finalize("success")
    log.info("Grad-CAM of %d test images written to %s", cfg.n, output)
    return output


@command("gradcam")
def main(cfg: DictConfig) -> None:
    gradcam(cfg)


if __name__ == "__main__":
    main()
