"""The package's layers, read from its source (AST, no imports): each package imports only its own layer and those
below it; nets know nothing of Lightning, LightningModules nothing of Hydra, and neither draws; library code imports
no command, and importing a module changes nothing outside it.

Each rule is a function of the modules' sources, so the checker itself is tested on planted violations too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, project_scripts

PACKAGE = ROOT / "fakedetect"


def module_name(path: Path) -> str:
    """Dotted name; a package's own file keeps `__init__`, so its package is the name less the last part."""
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imported_modules(tree: ast.Module, module: str) -> Iterator[str]:
    """Every module an import statement names (anywhere in the file, lazy imports too), relative ones resolved;
    `from a import b` yields a and a.b, as b may be a module."""
    package = module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(f"{prefix}.")


def import_time_statements(tree: ast.Module) -> Iterator[ast.AST]:
    """Nodes that run when the module is imported: everything outside function bodies (class bodies run too)."""
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            pending.extend(ast.iter_child_nodes(node))


def _is_os_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    ) or (isinstance(node, ast.Name) and node.id == "environ")


def import_side_effects(tree: ast.Module) -> list[str]:
    """`matplotlib.use(...)` and writes to `os.environ` that run at import."""
    matplotlib_names = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name == "matplotlib"
    }
    found = []
    for node in import_time_statements(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if node.func.attr == "use" and isinstance(owner, ast.Name) and owner.id in matplotlib_names:
                found.append(f"line {node.lineno}: matplotlib.use at import")
            if node.func.attr in ("update", "setdefault", "pop", "clear") and _is_os_environ(owner):
                found.append(f"line {node.lineno}: os.environ.{node.func.attr} at import")
            if node.func.attr == "putenv" and isinstance(owner, ast.Name) and owner.id == "os":
                found.append(f"line {node.lineno}: os.putenv at import")
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, (ast.AugAssign, ast.AnnAssign))
            else node.targets
            if isinstance(node, ast.Delete)
            else []
        )
        for target in targets:
            if isinstance(target, ast.Subscript) and _is_os_environ(target.value):
                found.append(f"line {node.lineno}: os.environ[...] written at import")
    return found


def hydra_mains(tree: ast.Module) -> bool:
    """Whether a top-level function is decorated with `hydra.main(...)`: a command."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                func = decorator.func if isinstance(decorator, ast.Call) else decorator
                if (
                    isinstance(func, ast.Attribute)
                    and func.attr == "main"
                    and isinstance(func.value, ast.Name)
                    and func.value.id == "hydra"
                ):
                    return True
    return False


def sources() -> dict[str, ast.Module]:
    return {module_name(path): ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.rglob("*.py"))}


def entry_points(modules: dict[str, ast.Module]) -> set[str]:
    scripts = {target.split(":")[0] for target in project_scripts().values()}
    return scripts | {name for name, tree in modules.items() if hydra_mains(tree)}


# The layers, lowest first. A module imports its own layer and the layers below, never one above; the packages of
# one layer may import each other. A module's layer is that of the longest prefix listed; the commands,
# fakedetect/<name>.py, stand above them all, and the package root (fakedetect/__init__.py) below.
LAYERS: tuple[tuple[str, ...], ...] = (
    # what every layer may use: errors, the console, devices, samplers
    ("fakedetect.utils",),
    # plain parts: nets (nn.Modules), losses, metrics, and the data (sources, decoding, loaders, the data module)
    ("fakedetect.nets", "fakedetect.losses", "fakedetect.metrics", "fakedetect.data"),
    # LightningModules: nets trained with losses and metrics on the data's batches
    ("fakedetect.modules",),
    # the run's glue: objects built from config, checkpoints, run records
    ("fakedetect.utils.builders", "fakedetect.utils.checkpoint", "fakedetect.utils.records"),
    # what runs in a Trainer's loops, and what is drawn or tabled from them
    ("fakedetect.callbacks", "fakedetect.reporting"),
    # the commands' back-ends and their decorator
    ("fakedetect.tools", "fakedetect.benchmarks", "fakedetect.search", "fakedetect.utils.app"),
)
TOP = len(LAYERS)

DRAWING = "drawing belongs in fakedetect.reporting and fakedetect.callbacks"
CONFIG = "{layer} take built parts, never a config: configs are read in fakedetect.utils.builders"
# what a package may not import directly, and why
FOREIGN: dict[str, dict[str, str]] = {
    "fakedetect.nets": {"hydra": CONFIG, "omegaconf": CONFIG, "matplotlib": DRAWING},
    "fakedetect.modules": {"hydra": CONFIG, "omegaconf": CONFIG, "matplotlib": DRAWING},
    "fakedetect.data": {"matplotlib": DRAWING},
}
# packages whose modules import no Lightning, directly or through the fakedetect modules they import
LIGHTNING_FREE = {"fakedetect.nets": "nets are plain nn.Modules: training belongs in fakedetect.modules"}


def layer(name: str, commands: set[str]) -> int | None:
    """The rank of a module (or of a name a module imports) in LAYERS; None for a package no layer lists."""
    ranks = [(len(prefix), rank) for rank, prefixes in enumerate(LAYERS) for prefix in prefixes if within(name, prefix)]
    if ranks:
        return max(ranks)[1]
    if name in commands:
        return TOP
    return 0 if name.count(".") <= 1 else None  # the package root, and the names it defines (package_file)


def layer_violations(name: str, imports: set[str], commands: set[str]) -> list[str]:
    own = layer(name, commands)
    if own is None:
        return [f"{name} is in no layer: add its package to LAYERS in tests/test_layering.py"]
    found = []
    for imported in sorted(i for i in imports if within(i, "fakedetect") and i not in commands):
        rank = layer(imported, commands)
        if rank is not None and rank > own:
            found.append(f"{name} imports {imported}, of a higher layer ({rank} > {own}): see LAYERS")
    return found


def foreign_violations(name: str, imports: set[str]) -> list[str]:
    return [
        f"{name} imports {i}: {why.format(layer=package.split('.')[-1])}"
        for package, rules in FOREIGN.items()
        if within(name, package)
        for foreign, why in rules.items()
        for i in sorted(imports)
        if within(i, foreign)
    ]


def package_modules(name: str, modules: dict[str, ast.Module]) -> list[str]:
    """The modules of `modules` that importing `name` runs: it, and the `__init__` of every package above it."""
    parts = name.split(".")
    found = [".".join([*parts[:n], "__init__"]) for n in range(1, len(parts) + 1)]
    return [m for m in [*found, name] if m in modules]


def reaches(name: str, modules: dict[str, ast.Module], external: str) -> list[str] | None:
    """The chain of fakedetect modules through which importing `name` imports `external`; None when it does not."""
    chain: dict[str, str | None] = {name: None}
    pending = [name]
    while pending:
        current = pending.pop()
        imports = set(imported_modules(modules[current], current))
        if any(within(i, external) for i in imports):
            path = [current]
            while (previous := chain[path[-1]]) is not None:
                path.append(previous)
            return path[::-1]
        for i in sorted(imports):
            for module in package_modules(i, modules):
                if module not in chain:
                    chain[module] = current
                    pending.append(module)
    return None


def violations(modules: dict[str, ast.Module], commands: set[str]) -> list[str]:
    """Every broken rule of the package, one line each."""
    found = []
    for name, tree in modules.items():
        imports = set(imported_modules(tree, name))
        found += layer_violations(name, imports, commands)
        found += foreign_violations(name, imports)
        for package, why in LIGHTNING_FREE.items():
            chain = reaches(name, modules, "lightning") if within(name, package) else None
            if chain is not None:
                through = f" through {' -> '.join(chain[1:])}" if len(chain) > 1 else ""
                found.append(f"{name} imports lightning{through}: {why}")
        found += [
            f"{name} imports the command {i}: move what it needs into a library module"
            for i in sorted(imports)
            if i in commands and i != name
        ]
        found += [f"{name}: {effect}" for effect in import_side_effects(tree)]
    return found


def test_the_package_keeps_its_layers() -> None:
    modules = sources()
    commands = entry_points(modules)
    assert {"fakedetect.train", "fakedetect.eval", "fakedetect.predict", "fakedetect.gradcam"} <= commands
    assert violations(modules, commands) == []


PLANTED: list[tuple[str, str, str]] = [
    ("fakedetect.nets.planted", "import matplotlib.pyplot as plt\n", "drawing belongs"),
    ("fakedetect.modules.planted", "def f():\n    from matplotlib.figure import Figure\n", "drawing belongs"),
    ("fakedetect.nets.planted", "import lightning as L\n", "nets are plain nn.Modules"),
    ("fakedetect.nets.planted", "from omegaconf import DictConfig\n", "configs are read in"),
    ("fakedetect.modules.planted", "def f():\n    import hydra\n", "modules take built parts"),
    ("fakedetect.data.planted", "from fakedetect.reporting.figures import new_figure\n", "of a higher layer"),
    ("fakedetect.modules.planted", "from ..reporting import figures\n", "of a higher layer"),
    ("fakedetect.modules.planted", "from fakedetect.callbacks.ema import EMA\n", "of a higher layer"),
    ("fakedetect.data.planted", "from fakedetect.modules import Detector\n", "of a higher layer"),
    ("fakedetect.reporting.planted", "from fakedetect.tools.audit import dataset\n", "of a higher layer"),
    ("fakedetect.callbacks.planted", "from fakedetect.benchmarks.throughput import bench\n", "of a higher layer"),
    ("fakedetect.utils.planted", "from fakedetect.utils.builders import instantiate\n", "of a higher layer"),
    ("fakedetect.newpackage.planted", "import torch\n", "is in no layer"),
    ("fakedetect.gradcam", "from fakedetect.predict import resolve_device\n", "imports the command"),
    ("fakedetect.utils.planted", "from fakedetect import train\n", "imports the command"),
    ("fakedetect.reporting.planted", "import matplotlib\nmatplotlib.use('Agg')\n", "matplotlib.use at import"),
    ("fakedetect.nets.planted", "import os\nos.environ['HF_HUB_OFFLINE'] = '1'\n", "os.environ[...] written"),
    ("fakedetect.nets.planted", "import os\nif True:\n    os.environ.setdefault('A', '1')\n", "os.environ.setdefault"),
]


@pytest.mark.parametrize(("name", "source", "message"), PLANTED)
def test_each_rule_catches_a_planted_violation(name: str, source: str, message: str) -> None:
    found = violations({name: ast.parse(source)}, {"fakedetect.train", "fakedetect.predict"})
    assert len(found) >= 1 and all(message in line for line in found), found


@pytest.mark.parametrize(
    ("name", "source"),
    [
        # at call time, in a command: allowed
        ("fakedetect.reporting.planted", "import matplotlib\ndef draw():\n    matplotlib.use('Agg')\n"),
        ("fakedetect.reporting.planted", "import os\nvalue = os.environ.get('HF_HUB_OFFLINE', '1')\n"),  # reading
        ("fakedetect.callbacks.planted", "from fakedetect.reporting.figures import new_figure\n"),  # one layer
        ("fakedetect.tools.planted", "from fakedetect import package_file\nfrom fakedetect.data import layouts\n"),
        ("fakedetect.modules.planted", "import lightning as L\nfrom fakedetect.nets.base import DetectorNet\n"),
    ],
)
def test_what_runs_later_reads_or_looks_down_is_allowed(name: str, source: str) -> None:
    assert violations({name: ast.parse(source)}, set()) == []


def test_nets_reach_no_lightning_through_what_they_import() -> None:
    modules = {
        "fakedetect.nets.planted": ast.parse("from fakedetect.utils.helper import f\n"),
        "fakedetect.utils.__init__": ast.parse(""),
        "fakedetect.utils.helper": ast.parse("def f():\n    import lightning\n"),
    }
    assert violations(modules, set()) == [
        "fakedetect.nets.planted imports lightning through fakedetect.utils.helper: nets are plain nn.Modules: "
        "training belongs in fakedetect.modules"
    ]
    modules["fakedetect.utils.helper"] = ast.parse("import torch\n")
    assert violations(modules, set()) == []


def test_every_package_has_a_layer() -> None:
    packages = {name.split(".")[1] for name in sources() if name.count(".") > 1}
    listed = {prefix.split(".")[1] for prefixes in LAYERS for prefix in prefixes}
    assert packages == listed, "each package of fakedetect/ is listed in LAYERS, and LAYERS lists no other"


def test_commands_are_found_by_their_hydra_main() -> None:
    tree = ast.parse("import hydra\n@hydra.main(config_path='c', config_name='x')\ndef main(cfg):\n    pass\n")
    assert hydra_mains(tree) and not hydra_mains(ast.parse("def main():\n    pass\n"))


def test_figures_need_no_pyplot_backend(tmp_path: Path) -> None:
    """Every figure of the report and the figure callbacks is drawn on its own Agg canvas: pyplot manages none of
    them, so no backend is chosen, switched or opened (a window, on a desktop)."""
    import matplotlib.pyplot as plt
    import torch

    from fakedetect.callbacks.figures import reconstruction_mistakes_figure
    from fakedetect.reporting.report import ConfidentMistakes, write_report
    from fakedetect.reporting.robustness import write_robustness

    generator = torch.Generator().manual_seed(0)
    probs, labels = torch.rand(32, generator=generator), torch.arange(32) % 2
    mistakes = ConfidentMistakes(0.5, per_kind=2)
    mistakes(torch.rand(32, 3, 8, 8, generator=generator), probs, labels)
    plt.close("all")
    write_report(tmp_path, probs, labels, mistakes, {"0.5": 0.5}, ["REAL", "FAKE"])
    write_robustness(tmp_path, [{"condition": "clean", "acc": 0.9, "auroc": 0.95}])
    reconstruction_mistakes_figure(
        torch.rand(2, 3, 8, 8),
        torch.rand(2, 3, 8, 8),
        torch.tensor([0, 1]),
        torch.tensor([0.9, 0.1]),
        0.5,
        ["REAL", "FAKE"],
    ).savefig(tmp_path / "ae.png")
    assert plt.get_fignums() == []
    assert {"confusion_matrix.png", "roc.png", "mistakes.png", "robustness.png", "ae.png"} <= {
        p.name for p in tmp_path.iterdir()
    }
