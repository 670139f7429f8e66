"""`python -m fakedetect.audit root=...`: audit a dataset before training on it (fakedetect/data/inspect.py)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from omegaconf import DictConfig, OmegaConf

from fakedetect.data.decode import DEFAULT_MAX_PIXELS
from fakedetect.data.inspect import audit
from fakedetect.reporting.audit import draw_sizes
from fakedetect.utils.app import command


@command("audit")
def main(cfg: DictConfig) -> None:
    aliases = cfg.get("aliases")
    names = None if aliases is None else cast("dict[str, list[str]]", OmegaConf.to_container(aliases))
    audit(
        cfg.root,
        list(cfg.classes),
        Path(cfg.output_dir),
        cfg.near_distance,
        cfg.get("workers"),
        cfg.get("max_pixels", DEFAULT_MAX_PIXELS),
        aliases=names,
        layout=cfg.get("layout", "auto"),
        manifest=cfg.get("manifest"),
        decode=cfg.get("decode", True),
        shortcut_threshold=cfg.get("shortcut_threshold", 0.9),
        draw_sizes=draw_sizes,
    )


if __name__ == "__main__":
    main()
