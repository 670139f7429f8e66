"""`python -m fakedetect.pack data.root=... output=DIR`: a dataset as LitData chunks, for `data.loader=litdata`."""

from __future__ import annotations

from omegaconf import DictConfig

from fakedetect.tools.pack import pack
from fakedetect.utils.app import command
from fakedetect.utils.builders import instantiate


@command("pack")
def main(cfg: DictConfig) -> None:
    datamodule = instantiate(cfg.data, loader="cached")
    pack(datamodule, cfg.output, cfg.chunk_bytes, cfg.overwrite)


if __name__ == "__main__":
    main()
