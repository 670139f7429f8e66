"""`python -m fakedetect.export ckpt_path=... [output=DIR]`: a checkpoint as a shareable detector folder."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from fakedetect.utils.app import command
from fakedetect.utils.checkpoint import DETECTOR_JSON, WEIGHTS_FILE, export_detector, load_trained
from fakedetect.utils.errors import ConfigError
from fakedetect.utils.signals import doing

log = logging.getLogger(__name__)


def export(cfg: DictConfig) -> Path:
    """Rebuild the detector as eval would (so a checkpoint that does not load is not exported), then write it."""
    output = Path(cfg.output)
    taken = [name for name in (DETECTOR_JSON, WEIGHTS_FILE) if (output / name).exists()]
    if taken and not cfg.overwrite:
        raise ConfigError(f"output={output} already holds {', '.join(taken)}; pass overwrite=true or another output")
    trained = load_trained(cfg.ckpt_path, trust=cfg.get("trust"))
    with doing(
        f"writing the detector to {output}",
        f"no new {DETECTOR_JSON} was written, so {output} holds no new export: export again (with overwrite=true)",
    ):
        export_detector(trained, output, source=cfg.ckpt_path)
    log.info("detector exported to %s (%s, %s)", output, WEIGHTS_FILE, DETECTOR_JSON)
    return output


@command("export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
