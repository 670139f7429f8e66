"""Layouts and labels: which member names of a source are images, of which split, class and source.

Pure functions over lists of member names (POSIX-style, relative to the source root), plus the CSV manifest
reader, so that every layout is testable without files. Layouts (`data.layout`):

- `folders`: `[prefix/][split/]class/image`; split folders train, val and test (any case; also named training,
  valid, validation or testing, as Kaggle's sets often do); source = the class name.
- `genimage`: GenImage's `<generator>/{train,val}/{ai,nature}/image` (its real tree nests one more level,
  e.g. `stable_diffusion_v_1_4/imagenet_ai_0419_sdv4/train/ai`: the generator is the folder right above the
  split). GenImage's `val` is the split its paper tests on, so it maps to split "test" here, and train's
  validation is carved from train.
- `forensynths`: CNNDetection's `[split/]<generator>/[<category>/]{0_real,1_fake}/image`; the generator is the
  folder right below the split folder, or the first folder of the name when there is no split folder. (Its
  train and val trees hold ProGAN only, by category, so there the "generator" is the category.)
- `manifest`: a CSV `path,label[,split][,source]` (`data.manifest`), as Kaggle's "AI vs human-generated" ships.
- `auto`: the manifest when one is given; GenImage when every class folder is `ai`/`nature` under train/val;
  ForenSynths when every class folder is `0_real`/`1_fake`; else folders.

Class folders match case-insensitively, by class name or by an alias (`data.aliases`).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from fakedetect.utils.choices import Choice
from fakedetect.utils.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif"}
SPLITS = ("train", "val", "test")
# split folder names (lower-cased) and the split each one is: Kaggle's sets often name their validation split
# `valid` or `validation`
SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
DEFAULT_ALIASES: dict[str, tuple[str, ...]] = {"REAL": ("real", "nature", "0_real"), "FAKE": ("fake", "ai", "1_fake")}
GENIMAGE_CLASS_FOLDERS = {"ai", "nature"}
FORENSYNTHS_CLASS_FOLDERS = {"0_real", "1_fake"}
# manifest header names accepted for each column (Kaggle's "AI vs human-generated" names its path `file_name`)
MANIFEST_COLUMNS = {
    "path": ("path", "file_name", "filename", "file", "image"),
    "label": ("label", "class", "target"),
    "split": ("split",),
    "source": ("source", "generator"),
}


class Layout(Choice):
    """How member names say split, class and source (the module docstring)."""

    AUTO = "auto"
    FOLDERS = "folders"
    GENIMAGE = "genimage"
    FORENSYNTHS = "forensynths"
    MANIFEST = "manifest"


class DataLayoutError(ConfigError):
    """The source is missing, or its folders are not laid out as `[split/]class/image`."""


@dataclass(frozen=True, slots=True)  # slots: a million entries of GenImage in a third less memory
class Entry:
    """One image file: its member name inside the source, its split ("" when the source has none), its class
    index and where it came from (the generator or real source; the class name when nothing says more)."""

    name: str
    split: str
    label: int
    source: str = ""


@dataclass
class Listing:
    """Every image entry of a source, plus the files ignored (not images, or not placed in a class), the entries
    that are not regular files (FIFOs, devices, sockets, broken links: reading one could hang or never end), and
    the manifest rows whose file is not in the source (skipped and counted)."""

    entries: list[Entry]
    ignored: list[str]
    not_regular: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Entry]:
        return [e for e in self.entries if e.split == name]


def class_folders(classes: list[str], aliases: Mapping[str, Iterable[str]] | None = None) -> dict[str, int]:
    """Lower-cased folder name -> class index: every class name, plus its aliases (the defaults when None)."""
    by_lower = {c.lower(): i for i, c in enumerate(classes)}
    if aliases is not None and not isinstance(aliases, Mapping):
        raise ConfigError(f"data.aliases must be a mapping of class name to folder names, got {aliases!r}")
    table = dict(by_lower)
    for cls, names in (DEFAULT_ALIASES if aliases is None else aliases).items():
        index = by_lower.get(str(cls).lower())
        if index is None:
            if aliases is None:
                continue  # the default aliases of classes this run does not have
            raise ConfigError(f"data.aliases: '{cls}' is not one of data.classes {list(classes)}")
        if isinstance(names, str) or not isinstance(names, Iterable):
            raise ConfigError(f"data.aliases.{cls} must be a list of folder names, got {names!r}")
        for name in names:
            other = table.setdefault(str(name).lower(), index)
            if other != index:
                raise ConfigError(
                    f"data.aliases: folder name '{name}' would label both {classes[other]} and "
                    f"{classes[index]}; give it to one class only"
                )
    return table


# (folders, lower-cased folders, fallback source) -> (split, source), or None when the image is not placed
Placer = Callable[[tuple[str, ...], tuple[str, ...], str], "tuple[str, str] | None"]


def _folders(dirs: tuple[str, ...], lower: tuple[str, ...], fallback: str) -> tuple[str, str]:
    return (SPLIT_FOLDERS.get(lower[-2], "") if len(lower) >= 2 else ""), ""  # source: the class name


def _genimage(dirs: tuple[str, ...], lower: tuple[str, ...], fallback: str) -> tuple[str, str] | None:
    if len(lower) < 2 or lower[-2] not in ("train", "val"):
        return None
    return ("train" if lower[-2] == "train" else "test"), (dirs[-3] if len(dirs) >= 3 else fallback)


def _forensynths(dirs: tuple[str, ...], lower: tuple[str, ...], fallback: str) -> tuple[str, str]:
    marks = [i for i, d in enumerate(lower[:-1]) if d in SPLIT_FOLDERS]
    if not marks:
        return "", (dirs[0] if len(dirs) >= 2 else fallback)
    i = marks[-1]
    return SPLIT_FOLDERS[lower[i]], (dirs[i + 1] if i + 1 < len(dirs) - 1 else fallback)


PLACERS: dict[Layout, Placer] = {Layout.FOLDERS: _folders, Layout.GENIMAGE: _genimage, Layout.FORENSYNTHS: _forensynths}
EXPECTED = {
    Layout.FOLDERS: "split/class/image, e.g. train/REAL/x.jpg, or class/image",
    Layout.GENIMAGE: "<generator>/{train,val}/<class>/image, e.g. sdv4/train/ai/x.png",
    Layout.FORENSYNTHS: "[split/]<generator>/[<category>/]<class>/image, e.g. test/progan/cat/1_fake/x.png",
}


def detect_layout(class_dirs: list[tuple[str, ...]]) -> Layout:
    """The layout that the lower-cased folder paths of the images in class folders point to (see the module doc)."""
    last = {d[-1] for d in class_dirs}
    if last and last <= GENIMAGE_CLASS_FOLDERS and all(len(d) >= 2 and d[-2] in ("train", "val") for d in class_dirs):
        return Layout.GENIMAGE
    if last and last <= FORENSYNTHS_CLASS_FOLDERS:
        return Layout.FORENSYNTHS
    return Layout.FOLDERS


def check_layout(layout: str, manifest: object) -> Layout:
    if layout not in Layout.values():
        raise ConfigError(f"data.layout must be one of {', '.join(Layout.values())}, got {layout!r}")
    if layout == Layout.MANIFEST and manifest is None:
        raise ConfigError("data.layout=manifest needs data.manifest=<a CSV path,label[,split][,source]>")
    if manifest is not None and layout not in (Layout.AUTO, Layout.MANIFEST):
        raise ConfigError(
            f"data.manifest is set but data.layout={layout}: use data.layout=manifest (or auto), or data.manifest=null"
        )
    return Layout(layout)


def _visible(parts: list[str]) -> bool:
    """Hidden files and macOS archive debris are neither images nor worth reporting."""
    return not any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _suffix(filename: str) -> str:
    """Lower-cased, as PurePosixPath.suffix gives it (which is slow over millions of names)."""
    i = filename.rfind(".")
    return filename[i:].lower() if 0 < i < len(filename) - 1 else ""


def match(
    names: Iterable[str],
    classes: list[str],
    aliases: Mapping[str, Iterable[str]] | None = None,
    layout: str = "auto",
    where: str = "",
    root_name: str = "",
) -> Listing:
    """Place member names by folder layout. `root_name` (the source's own name) stands in for a generator folder
    that lies above the root; `where` names the source in errors."""
    placing = check_layout(layout, None)
    index = class_folders(classes, aliases)
    ignored: list[str] = []
    candidates: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = []
    for name in sorted(names):
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if not _visible(parts):
            continue
        dirs = tuple(parts[:-1])
        lower = tuple(d.lower() for d in dirs)
        if _suffix(parts[-1]) in IMAGE_SUFFIXES and lower and lower[-1] in index:
            candidates.append((name, dirs, lower))
        else:
            ignored.append(name)
    if placing == Layout.AUTO:
        placing = detect_layout([lower for _, _, lower in candidates])
    place = PLACERS[placing]
    entries: list[Entry] = []
    for name, dirs, lower in candidates:
        label = index[lower[-1]]
        placed = place(dirs, lower, root_name or classes[label])
        if placed is None:
            ignored.append(name)
        else:
            entries.append(Entry(name, placed[0], label, placed[1] or classes[label]))
    if not entries:
        raise DataLayoutError(
            f"{where}: no images found in class folders {classes} (data.layout={layout}: expected "
            f"{EXPECTED[placing]}; other class folder names via data.aliases{_csv_hint(ignored)})"
        )
    return _checked(entries, ignored, classes, where, placing)


def _csv_hint(ignored: list[str]) -> str:
    csvs = [n for n in ignored if n.lower().endswith(".csv")]
    return f"; labels in a CSV: data.manifest={csvs[0]}" if csvs else ""


def _checked(entries: list[Entry], ignored: list[str], classes: list[str], where: str, layout: Layout) -> Listing:
    """Drop images outside split folders when there are split folders, and require every class in every split."""
    if {e.split for e in entries} != {""}:
        ignored = sorted(ignored + [e.name for e in entries if not e.split])
        entries = [e for e in entries if e.split]
    present = {(e.split, e.label) for e in entries}
    for split in sorted({s for s, _ in present}):
        for i, cls in enumerate(classes):
            if (split, i) in present:
                continue
            if layout == Layout.MANIFEST:
                raise DataLayoutError(
                    f"{where}: no row of class {cls}"
                    + (f" in split {split}" if split else "")
                    + " has its image file in the source"
                )
            folder = f"'{split}/{cls}'" if split else f"'{cls}'"
            if layout == Layout.GENIMAGE and split == "test":
                folder = f"'val/{cls}' (GenImage's val is the test split)"
            raise DataLayoutError(f"{where}: split or class folder {folder} is missing or has no images")
    return Listing(entries, ignored)


def _manifest_columns(header: list[str], where: str) -> dict[str, int]:
    lowered = [h.strip().lower() for h in header]
    columns = {}
    for key, accepted in MANIFEST_COLUMNS.items():
        found = [i for i, h in enumerate(lowered) if h in accepted]
        if found:
            columns[key] = found[0]
    if "path" not in columns or "label" not in columns:
        raise DataLayoutError(
            f"{where}: the first row must name a path column (path or file_name) and a label "
            f"column (label), e.g. `path,label,split,source`; got {header}"
        )
    return columns


def read_manifest(
    text: str, where: str, classes: list[str], aliases: Mapping[str, Iterable[str]] | None = None
) -> list[tuple[int, Entry]]:
    """Parse a CSV manifest into (row number, entry) pairs; the first bad row stops with one line naming it.

    Labels are a class name or alias (any case) or a class index (0 = classes[0]); paths are relative to the
    source root; an empty split or source means none (source then = the class name).
    """
    index = class_folders(classes, aliases)
    rows = csv.reader(io.StringIO(text), strict=True)
    try:
        header = next(rows, None)
        if header is None:
            raise DataLayoutError(f"{where}: the manifest is empty; expected a header `path,label[,split][,source]`")
        columns = _manifest_columns(header, where)
        out: list[tuple[int, Entry]] = []
        seen: dict[str, int] = {}
        for row in rows:
            number = rows.line_num
            if not any(cell.strip() for cell in row):
                continue
            cells = {k: (row[i].strip() if i < len(row) else None) for k, i in columns.items()}
            if cells["path"] is None or cells["label"] is None:
                raise DataLayoutError(f"{where} row {number}: {len(row)} fields, the header has {len(header)}")
            name = _member(cells["path"], where, number)
            label = _label(cells["label"], index, classes, where, number)
            named = (cells.get("split") or "").lower()
            split = SPLIT_FOLDERS.get(named, "")
            if named and not split:
                raise DataLayoutError(
                    f"{where} row {number}: split {cells['split']!r} is not one of {', '.join(SPLIT_FOLDERS)} "
                    "(or empty)"
                )
            if name in seen:
                raise DataLayoutError(f"{where} row {number}: {name} is already listed on row {seen[name]}")
            seen[name] = number
            out.append((number, Entry(name, split, label, cells.get("source") or classes[label])))
    except csv.Error as err:
        raise DataLayoutError(f"{where} row {rows.line_num}: not valid CSV ({err})") from None
    splits = {e.split for _, e in out}
    if "" in splits and len(splits) > 1:
        first = next(n for n, e in out if not e.split)
        raise DataLayoutError(
            f"{where} row {first}: no split, while other rows have one; give every row a split, or none"
        )
    return out


def _member(path: str, where: str, number: int) -> str:
    """A manifest path as a member name: forward slashes, no leading ./; never outside the source root."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or path.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise DataLayoutError(f"{where} row {number}: path {path!r} must be relative to the data root, inside it")
    if not path.isprintable():
        raise DataLayoutError(f"{where} row {number}: path {path!r} holds control characters")
    return "/".join(parts)


def _label(value: str, index: dict[str, int], classes: list[str], where: str, number: int) -> int:
    if value.lower() in index:
        return index[value.lower()]
    if value.isdigit() and int(value) < len(classes):
        return int(value)
    raise DataLayoutError(
        f"{where} row {number}: label {value!r} is not a class of {classes}, an alias of one "
        f"(data.aliases), or a class index 0..{len(classes) - 1}"
    )


def from_manifest(
    text: str, where: str, names: Iterable[str], classes: list[str], aliases: Mapping[str, Iterable[str]] | None = None
) -> Listing:
    """The entries of a manifest whose files the source holds; rows without their file are skipped and counted."""
    rows = read_manifest(text, where, classes, aliases)
    present = set(names)
    entries = [e for _, e in rows if e.name in present]
    missing = [e.name for _, e in rows if e.name not in present]
    if missing:
        log.warning(
            "%s: skipped %d of its %d rows whose file is not in the source, e.g. %s",
            where,
            len(missing),
            len(rows),
            missing[0],
        )
    if not entries:
        raise DataLayoutError(
            f"{where}: none of its {len(rows)} rows names a file in the source"
            + (f" (e.g. {missing[0]}); paths must be relative to data.root" if missing else "")
        )
    listed = {e.name for e in entries}
    ignored = sorted(n for n in present if n not in listed and _visible(n.split("/")))
    listing = _checked(entries, ignored, classes, where, Layout.MANIFEST)
    listing.missing = missing
    return listing
