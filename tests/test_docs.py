"""The README and the reference under docs/ describe commands and pages that exist.

`mkdocs build --strict` (make lint, CI) checks the links between docs/ pages; the README is outside the site, so
its links into docs/ are checked here, and every documented command line is composed as the command would.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from tests.conftest import CONF, ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r"[`*]", "", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, command, arguments) of every `python -m fakedetect.<name> ...` line in a fenced code block."""
    found = []
    for page in PAGES:
        for block in re.findall(r"^ *```(?:bash)?\n(.*?)^ *```", page.read_text(), flags=re.S | re.M):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                match = re.search(r"python -m fakedetect\.(\w+)(.*)", line)
                if match:
                    # up to a comment, a redirection or the next command of the line
                    args = re.split(r"\s+#|\s*[>&;|]", match.group(2))[0]
                    found.append((page.name, match.group(1), shlex.split(args)))
    return found


COMMANDS = documented_commands()


def test_readme_links_land_on_pages_and_headings() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", (ROOT / "README.md").read_text())
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.exists(), f"README links to {path}, which does not exist"
        assert not anchor or anchor in anchors(target), f"README links to #{anchor}, no heading of {path}"


def test_slug_matches_the_pages_own_links() -> None:
    """The slug rule above is MkDocs': every same-page link of the reference names a heading it finds."""
    checked = 0
    for page in PAGES[1:]:
        for anchor in re.findall(r"\]\(#([^)\s]+)\)", page.read_text()):
            assert anchor in anchors(page), f"{page.name}: #{anchor}"
            checked += 1
    assert checked


@pytest.mark.parametrize(
    ("where", "name", "args"), COMMANDS, ids=[f"{w}:{n}:{' '.join(a)[:60]}" for w, n, a in COMMANDS]
)
def test_documented_command_composes(where: str, name: str, args: list[str]) -> None:
    """Each override of a documented command names a config group option or key that exists, as Hydra reads it."""
    assert (CONF / f"{name}.yaml").exists(), f"{where}: no command {name}"
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    if name == "download" and overrides and "=" not in overrides[0]:
        overrides[0] = f"dataset={overrides[0]}"  # `download cifake`: the dataset word (fakedetect.download)
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    for override in overrides:
        key, _, _ = override.partition("=")
        folder = key.lstrip("+").replace(".", "/")
        assert "." not in key or not (CONF / folder).is_dir(), f"{where}: {key}= is the group {folder}=: write that"
        group = "/" in key or "@" in key or (CONF / key).is_dir()
        if not group:  # a group's choice is checked by composing; a key must be in the composed config
            assert OmegaConf.select(cfg, key.lstrip("+"), default=KeyError) is not KeyError, f"{where}: {key}"
