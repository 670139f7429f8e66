"""fakedetect: detectors of AI-generated images."""

from pathlib import Path

from omegaconf import OmegaConf


def package_file(relative: str) -> str:
    """`${fakedetect.package:data/sample/cifake_sample.zip}` in a config: a file shipped inside the package, found
    wherever it is installed and wherever a run is launched from."""
    return str(Path(__file__).parent / relative)


OmegaConf.register_resolver("fakedetect.package", package_file, replace=True)
