"""fakedetect: detectors of AI-generated images."""

from pathlib import Path

from omegaconf import OmegaConf

PACKAGE = Path(__file__).resolve().parent


def package_file(relative: str) -> str:
    """`${fakedetect.package:data/sample/cifake_sample.zip}` in a config: a file shipped inside the package, found
    wherever it is installed and wherever a run is launched from."""
    return str(PACKAGE / relative)


def config_dir() -> Path:
    """The configs every command composes. The top-level conf/ is their one source: a wheel or sdist install carries
    it inside the package (fakedetect/conf, mapped in pyproject.toml), a checkout or an editable install keeps it
    beside the package."""
    for folder in (PACKAGE / "conf", PACKAGE.parent / "conf"):
        if (folder / "train.yaml").is_file():
            return folder
    from fakedetect.utils.errors import ConfigError  # here: importing the package imports no Hydra

    raise ConfigError(
        f"no configs found: neither {PACKAGE / 'conf'} (an installed package) nor {PACKAGE.parent / 'conf'} "
        "(a checkout) holds train.yaml; reinstall fakedetect from a wheel or sdist, or run from a full checkout"
    )


OmegaConf.register_resolver("fakedetect.package", package_file, replace=True)
