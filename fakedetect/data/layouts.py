"""Layouts and labels: which member names of a source are images, of which split, class and source."""

from __future__ import annotations

from dataclasses import dataclass, field

from fakedetect.utils.errors import ConfigError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class DataLayoutError(ConfigError):
    """The source is missing, or its folders are not laid out as `[split/]class/image`."""


@dataclass(frozen=True)
class Entry:
    """One image file: its member name inside the source, its split, its class index and where it came from
    (a generator or real source: GenImage/ForenSynths generator folder, manifest column, else the class name)."""

    name: str
    split: str
    label: int
    source: str = ""


@dataclass
class Listing:
    """Every image entry of a source, plus the files ignored for not being images, and for not being regular
    files (FIFOs, devices, sockets, broken links: reading one could hang or never end)."""

    entries: list[Entry]
    ignored: list[str]
    not_regular: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Entry]:
        return [e for e in self.entries if e.split == name]
