"""`python -m fakedetect.audit data.root=...`: audit a dataset before training on it (fakedetect/tools/audit/).

The dataset is named as training names it, by the `data` group (`data=folder data.root=PATH`, `data.layout`,
`data.manifest`, `data.aliases`, `data.classes`, `data.max_pixels`, `data.max_file_bytes`)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from omegaconf import DictConfig, OmegaConf

from fakedetect.data.config import DataConfig
from fakedetect.tools.audit.dataset import audit
from fakedetect.utils.app import command


@command("audit")
def main(cfg: DictConfig) -> None:
    data = cfg.data
    aliases = None if data.aliases is None else cast("dict[str, list[str]]", OmegaConf.to_container(data.aliases))
    audit(
        data.root,
        list(data.classes),
        Path(cfg.output_dir),
        cfg.near_distance,
        cfg.workers,
        DataConfig.check("max_pixels", data.max_pixels),
        max_file_bytes=DataConfig.check("max_file_bytes", data.max_file_bytes),
        aliases=aliases,
        layout=data.layout,
        manifest=data.manifest,
        decode=cfg.decode,
        shortcut_threshold=cfg.shortcut_threshold,
        figure=True,
    )


if __name__ == "__main__":
    main()
