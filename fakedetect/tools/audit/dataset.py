"""Audit a dataset before training on it (the `python -m fakedetect.audit` command).

Image sizes, aspect ratios and area outliers (IQR), per-channel statistics, and duplicates: byte-identical
files and near-identical images (equal perceptual hashes, or within a Hamming distance) inside a split
and across train and test. The shortcut audit (shortcuts.py) reports sizes, formats and JPEG quality per
class and per source, and warns when one of them alone separates the classes. `decode=false` keeps to image
headers (shortcut audit and sizes only: fast on tens of GB). Writes audit.json, audit.md, histograms and an
exclusion list for training. Lists the images as training does (data.aliases, data.layout, data.manifest).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path

import imagehash
import numpy as np

from fakedetect.data.cache import read_batches
from fakedetect.data.decode import DEFAULT_MAX_PIXELS, file_digest, open_image, to_rgb
from fakedetect.data.layouts import DataLayoutError, Entry
from fakedetect.data.sources import DEFAULT_MAX_FILE_BYTES, Source
from fakedetect.tools.audit.figures import draw_sizes
from fakedetect.tools.audit.shortcuts import audit_shortcuts, header_facts
from fakedetect.utils.errors import is_number, require
from fakedetect.utils.processes import worker_pool
from fakedetect.utils.signals import doing

log = logging.getLogger(__name__)


def describe(blob: bytes | str, max_pixels: int | None = DEFAULT_MAX_PIXELS, decode: bool = True) -> dict:
    """Header facts of one image file (upright size, format, mode, JPEG quality) and, with `decode`, its per-channel
    sums and perceptual hash (decoded as training decodes it: upright, 16-bit scaled); or the reason it is unreadable
    (`blob` is that reason when it could not be read)."""
    if isinstance(blob, str):
        return {"error": blob}
    facts = header_facts(blob)
    if "error" in facts or not decode:
        return facts
    try:
        with open_image(blob, max_pixels) as img:
            rgb_image = to_rgb(img)
        rgb = np.asarray(rgb_image, dtype=np.float64) / 255
        phash = int(str(imagehash.phash(rgb_image)), 16)
    except Exception as err:  # noqa: BLE001 - an unreadable file is reported, not fatal
        return {"error": f"{type(err).__name__}: {err}"}
    return {
        **facts,
        "sum": rgb.sum((0, 1)).tolist(),
        "sq": (rgb**2).sum((0, 1)).tolist(),
        "phash": phash,
        "sha1": file_digest(blob),
    }


def _describe_chunk(
    names: list[str], blobs: list[bytes | str], max_pixels: int | None, decode: bool
) -> tuple[list[str], list[dict]]:
    return names, [describe(b, max_pixels, decode) for b in blobs]


def describe_all(
    source: Source,
    entries: list[Entry],
    workers: int | None = None,
    chunk_bytes: int = 64 << 20,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    decode: bool = True,
) -> list[dict]:
    """`describe` every entry on every core, reading the source in chunks of at most `chunk_bytes` with at most two
    chunks per worker in flight, so memory stays bounded on sets larger than RAM."""
    workers = workers or os.cpu_count() or 1
    position = {e.name: i for i, e in enumerate(entries)}
    out: list[dict] = [{"error": "not found in the source while reading it"}] * len(entries)
    describe_chunk = functools.partial(_describe_chunk, max_pixels=max_pixels, decode=decode)
    pending: set[Future] = set()

    def collect(done: Iterable[Future]) -> None:
        for future in done:
            names, facts = future.result()
            for name, f in zip(names, facts, strict=True):
                out[position[name]] = f

    with worker_pool(workers) as pool:
        for batch in read_batches(source, list(position), 2048, chunk_bytes):
            pending.add(pool.submit(describe_chunk, [n for n, _ in batch], [b for _, b in batch]))
            if len(pending) >= 2 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                collect(done)
        collect(wait(pending).done)
    return out


def iqr_outliers(values: np.ndarray, k: float = 1.5) -> tuple[int, int, tuple[float, float]]:
    """Counts below and above the Tukey fences [Q1 - k IQR, Q3 + k IQR], and the fences."""
    q1, q3 = np.percentile(values, [25, 75])
    low, high = q1 - k * (q3 - q1), q3 + k * (q3 - q1)
    return int((values < low).sum()), int((values > high).sum()), (float(low), float(high))


def hamming_groups(hashes: np.ndarray, max_distance: int) -> list[list[int]]:
    """Groups of indices whose 64-bit hashes are within `max_distance` bits (connected components).

    Exact matches are bucketed directly; for a distance d > 0, pairs must agree on one of d + 1 bands
    (pigeonhole), so only hashes sharing a band are compared.
    """
    parent = list(range(len(hashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    bands = max_distance + 1
    width = 64 // bands
    for b in range(bands):
        bits = width if b < bands - 1 else 64 - width * b
        keys = (hashes >> np.uint64(width * b)) & np.uint64((1 << bits) - 1)
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, key in enumerate(keys.tolist()):
            buckets[key].append(i)
        for members in buckets.values():
            for a, i in enumerate(members[:-1]):
                rest = np.array(members[a + 1 :])
                xor = (hashes[rest] ^ hashes[i]).view(np.uint8).reshape(-1, 8)
                for j in rest[np.unpackbits(xor, axis=1).sum(1) <= max_distance]:
                    parent[find(int(j))] = find(i)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(hashes)):
        groups[find(i)].append(i)
    return [g for g in groups.values() if len(g) > 1]


def duplicate_summary(groups: Iterable[list[int]], splits: list[str]) -> dict:
    """How many groups and surplus copies lie within each split, how many groups span train and test, and how many
    test images those hold (what a test without train copies leaves out)."""
    n_groups = surplus_copies = train_test_groups = train_test_test_images = 0
    within: defaultdict[str, int] = defaultdict(int)
    for g in groups:
        n_groups += 1
        surplus_copies += len(g) - 1
        names = {splits[i] for i in g}
        for s in names:
            members = sum(splits[i] == s for i in g)
            within[s] += members - 1 if members > 1 else 0
        if {"train", "test"} <= names:
            train_test_groups += 1
            train_test_test_images += sum(splits[i] == "test" for i in g)
    return {
        "groups": n_groups,
        "surplus_copies": surplus_copies,
        "within": dict(within),
        "train_test_groups": train_test_groups,
        "train_test_test_images": train_test_test_images,
    }


def exclusions(groups: Iterable[list[int]], entries: list[Entry]) -> list[str]:
    """Train files to leave out: every train copy of a test image, and all but one copy within train."""
    excluded = []
    for g in groups:
        train = [i for i in g if entries[i].split in ("train", "")]
        has_test = any(entries[i].split == "test" for i in g)
        excluded += [entries[i].name for i in (train if has_test else train[1:])]
    return sorted(excluded)


def audit(
    root: str,
    classes: list[str],
    out: Path,
    near_distance: int = 0,
    workers: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_file_bytes: int | None = DEFAULT_MAX_FILE_BYTES,
    aliases: Mapping[str, Iterable[str]] | None = None,
    layout: str = "auto",
    manifest: str | None = None,
    decode: bool = True,
    shortcut_threshold: float = 0.9,
    figure: bool = False,
) -> dict:
    """The audit written into `out` (audit.json, audit.md, the exclusion lists) and returned; `figure` adds
    sizes.png, a figure of the image sizes (the command draws it)."""
    require(
        "shortcut_threshold",
        shortcut_threshold,
        is_number(shortcut_threshold) and 0.5 <= shortcut_threshold <= 1,
        "a balanced accuracy in [0.5, 1]",
    )
    require("decode", decode, isinstance(decode, bool), "true or false")
    source = Source.open(root, max_file_bytes)
    listing = source.list(classes, aliases, layout, manifest)
    entries = listing.entries
    with doing(f"reading {len(entries)} images of {root} for the audit", f"no audit was written to {out}"):
        info = describe_all(source, entries, workers, max_pixels=max_pixels, decode=decode)
    bad = [(e.name, d["error"]) for e, d in zip(entries, info, strict=True) if "error" in d]
    keep = [i for i, d in enumerate(info) if "error" not in d]
    if not keep:
        raise DataLayoutError(
            f"{root}: none of its {len(entries)} image files can be decoded, e.g. {bad[0][0]}: {bad[0][1]}"
        )
    entries, info = [entries[i] for i in keep], [info[i] for i in keep]
    splits = [e.split or "all" for e in entries]
    w = np.array([d["w"] for d in info], dtype=float)
    h = np.array([d["h"] for d in info], dtype=float)
    area, aspect = w * h, w / h
    below, above, fences = iqr_outliers(area)
    shortcuts = audit_shortcuts(
        info, [e.label for e in entries], [e.source for e in entries], classes, shortcut_threshold
    )
    result = {
        "root": str(root),
        "images": len(entries),
        "per_split_class": {
            f"{s}/{classes[c]}": sum(1 for e in entries if (e.split or "all") == s and e.label == c)
            for s in sorted(set(splits))
            for c in range(len(classes))
        },
        "unreadable": [f"{n}: {err}" for n, err in bad],
        "ignored_files": len(listing.ignored),
        "not_regular_files": listing.not_regular,
        "manifest_rows_without_file": len(listing.missing),
        "modes": {m: sum(d["mode"] == m for d in info) for m in sorted({d["mode"] for d in info})},
        "width": _stats(w),
        "height": _stats(h),
        "aspect_ratio": _stats(aspect),
        "area": _stats(area),
        "area_outliers_iqr": {"below": below, "above": above, "fences": fences},
        "shortcuts": shortcuts,
    }
    out.mkdir(parents=True, exist_ok=True)
    if decode:
        result.update(_pixel_audit(info, entries, splits, near_distance, out))
    (out / "audit.json").write_text(json.dumps(result, indent=2))
    (out / "audit.md").write_text(_markdown(result, draw_sizes(out, w, h) if figure else None))
    for line in shortcuts["warnings"]:
        log.warning("shortcut: %s", line)
    log.info("audit of %s written to %s", root, out)
    return result


def _pixel_audit(info: list[dict], entries: list[Entry], splits: list[str], near_distance: int, out: Path) -> dict:
    """Channel statistics and duplicates (byte-identical and near-identical), with the exclusion lists written."""
    pixels = sum(d["w"] * d["h"] for d in info)
    mean = np.sum([d["sum"] for d in info], axis=0) / pixels
    std = np.sqrt(np.sum([d["sq"] for d in info], axis=0) / pixels - mean**2)
    byte_groups: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(info):
        byte_groups[d["sha1"]].append(i)
    exact = [g for g in byte_groups.values() if len(g) > 1]
    near = hamming_groups(np.array([d["phash"] for d in info], dtype=np.uint64), near_distance)
    excluded = exclusions(near + exact, entries)
    # the test files byte-identical to a train file: those a run's test/acc_dedup leaves out
    shared = sorted(
        entries[i].name for g in exact if {splits[j] for j in g} >= {"train", "test"} for i in g if splits[i] == "test"
    )
    (out / "test_copies_of_train.txt").write_text("".join(f"{n}\n" for n in shared))
    (out / "exclude_train.txt").write_text("\n".join(sorted(set(excluded))) + "\n")
    return {
        "channel_mean": mean.tolist(),
        "channel_std": std.tolist(),
        "byte_identical": duplicate_summary(exact, splits),
        "near_identical": {"max_hamming": near_distance, **duplicate_summary(near, splits)},
        "exclude_train": len(set(excluded)),
    }


def _stats(x: np.ndarray) -> dict[str, float]:
    return {
        "min": float(x.min()),
        "median": float(np.median(x)),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "max": float(x.max()),
    }


def _markdown(r: dict, figure: Path | None = None) -> str:
    lines = [
        f"# Data audit: {r['root']}",
        "",
        f"{r['images']} readable images ({len(r['unreadable'])} unreadable, {r['ignored_files']} other files "
        f"ignored, {len(r['not_regular_files'])} entries that are not regular files skipped, "
        f"{r['manifest_rows_without_file']} manifest rows without their file skipped); "
        f"per split/class: {r['per_split_class']}; modes: {r['modes']}.",
        "",
        f"- width {r['width']}, height {r['height']}",
        f"- aspect ratio {r['aspect_ratio']}",
        f"- area {r['area']}; IQR outliers: {r['area_outliers_iqr']}",
    ]
    if "byte_identical" in r:
        b, n = r["byte_identical"], r["near_identical"]
        lines += [
            f"- channel mean {np.round(r['channel_mean'], 4).tolist()}, std {np.round(r['channel_std'], 4).tolist()}",
            "",
            "| duplicates | groups | surplus copies | within splits | groups across train and test | their test "
            "images |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| byte-identical | {b['groups']} | {b['surplus_copies']} | {b['within']} | {b['train_test_groups']} | "
            f"{b['train_test_test_images']} |",
            f"| near-identical (pHash, Hamming <= {n['max_hamming']}) | {n['groups']} | {n['surplus_copies']} | "
            f"{n['within']} | {n['train_test_groups']} | {n['train_test_test_images']} |",
            "",
            f"{r['exclude_train']} train files are listed in exclude_train.txt (train copies of test images and "
            "repeats within train); train with `data.exclude=<that file>` to leave them out. The byte-identical test "
            "copies of train files are listed in test_copies_of_train.txt: the images test/acc_dedup leaves out.",
        ]
    else:
        lines += ["", "Read from headers only (decode=false): no channel statistics or duplicates."]
    shown = ["", f"![sizes]({figure.name})"] if figure else []
    return "\n".join(lines + ["", *_shortcut_markdown(r["shortcuts"]), *shown, ""])


def _shortcut_markdown(s: dict) -> list[str]:
    warned = [f"- **{w}**" for w in s["warnings"]] or [
        f"None: no attribute alone predicts the class with balanced accuracy >= {s['threshold']}."
    ]
    lines = [
        "## Shortcuts: what the file alone says about the class",
        "",
        *warned,
        "",
        "| attribute | balanced accuracy from it alone |",
        "| --- | --- |",
        *(f"| {a} | {v:.2f} |" for a, v in s["separation"].items()),
        "",
    ]
    for title, groups in (("class", s["per_class"]), ("source", s["per_source"])):
        lines += [
            f"| {title} | images | formats | modes | commonest sizes (distinct) | width | height | aspect ratio "
            "| JPEG quality |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, g in groups.items():
            sizes = ", ".join(f"{k} {v}" for k, v in g["sizes"].items())
            lines.append(
                f"| {name} | {g['images']} | {_counts(g['formats'])} | {_counts(g['modes'])} | {sizes} "
                f"({g['distinct_sizes']}) | {_span(g['width'])} | {_span(g['height'])} | "
                f"{_span(g['aspect_ratio'])} | {_span(g['jpeg_quality'])} |"
            )
        lines.append("")
    return lines


def _counts(c: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in c.items())


def _span(r: dict | None) -> str:
    """min-max (median), or a dash when there is nothing to range over."""
    if r is None:
        return "-"
    return f"{r['min']:g}-{r['max']:g} ({r['median']:g})"
