"""The package's layers, read from its source (AST, no imports): nets and LightningModules draw nothing, library code
imports no command, and importing a module changes nothing outside it.

Each rule is a function of one module's source, so the checker itself is tested on planted violations too.
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


# what the modules, nets and data layers may not import, and why
DRAWING = {
    "matplotlib": "matplotlib belongs in fakedetect.reporting",
    "fakedetect.reporting": "figures are reporting callbacks, not part of {layer}",
}


def violations(modules: dict[str, ast.Module], commands: set[str]) -> list[str]:
    """Every broken rule of the package, one line each."""
    found = []
    for name, tree in modules.items():
        imports = set(imported_modules(tree, name))
        layer = name.split(".")[1] if name.count(".") else ""
        if layer in ("modules", "nets", "data"):
            found += [
                f"{name} imports {i}: {why.format(layer=layer)}"
                for package, why in DRAWING.items()
                for i in sorted(imports)
                if within(i, package)
            ]
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
    ("fakedetect.nets.planted", "import matplotlib.pyplot as plt\n", "matplotlib belongs"),
    ("fakedetect.modules.planted", "def f():\n    from matplotlib.figure import Figure\n", "matplotlib belongs"),
    ("fakedetect.data.planted", "from fakedetect.reporting.figures import new_figure\n", "reporting callbacks"),
    ("fakedetect.modules.planted", "from ..reporting import figures\n", "reporting callbacks"),
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
    "source",
    [
        "import matplotlib\ndef draw():\n    matplotlib.use('Agg')\n",  # at call time, in a command: allowed
        "import os\nvalue = os.environ.get('HF_HUB_OFFLINE', '1')\n",  # reading is fine
    ],
)
def test_what_runs_later_or_only_reads_is_allowed(source: str) -> None:
    assert violations({"fakedetect.reporting.planted": ast.parse(source)}, set()) == []


def test_commands_are_found_by_their_hydra_main() -> None:
    tree = ast.parse("import hydra\n@hydra.main(config_path='c', config_name='x')\ndef main(cfg):\n    pass\n")
    assert hydra_mains(tree) and not hydra_mains(ast.parse("def main():\n    pass\n"))


def test_figures_need_no_pyplot_backend(tmp_path: Path) -> None:
    """Every figure of the report and the figure callbacks is drawn on its own Agg canvas: pyplot manages none of
    them, so no backend is chosen, switched or opened (a window, on a desktop)."""
    import matplotlib.pyplot as plt
    import torch
    from fakedetect.reporting.callbacks import reconstruction_mistakes_figure

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
