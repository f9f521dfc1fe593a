"""The package's layout rules (docs in the restructure): no import cycle, lazy imports included;
one home per dependency; no catch-all module. Read from the source with ``ast`` (no imports)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "bscrit"
#: Longest module allowed (lines). cli.py is typer option declarations, mostly.
MAX_LINES = {
    "cli.py": 800,
    "report.py": 650,
}  # cli: option declarations; report: a format_* per command
DEFAULT_MAX_LINES = 620


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        out[name] = p
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Every bscrit module ``name`` imports, at any depth (functions too), relative or absolute."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("bscrit"):
                found.add(mod)
                found.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("bscrit"))
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        deps = {d for d in _imports(name, path) if d in mods and d != name}
        # importing a package's submodule does not import a sibling: drop the package itself
        # ("from . import optim" names bscrit.optim; bscrit/__init__ is trivial)
        graph[name] = {d for d in deps if d != "bscrit"}
    return graph


def test_no_import_cycle_even_lazy():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_no_catch_all_module():
    too_long = {}
    for name, path in _modules().items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES.get(path.name, DEFAULT_MAX_LINES):
            too_long[name] = lines
    assert not too_long, too_long


def test_one_home_per_dependency():
    cli = {"bscrit.cli", "bscrit.cli_common", "bscrit.cli_runs", "bscrit.cli_confirm"}
    homes = {"typer": cli, "rich": {"bscrit.report", "bscrit.report_confirm", *cli}}
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        used = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                used.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                used.add(node.module.split(".")[0])
        for dep, allowed in homes.items():
            if dep in used:
                assert name in allowed, f"{name} imports {dep}; only {sorted(allowed)} may"


def test_no_module_named_like_the_api_functions():
    """The Python API exposes bscrit.measure / predict / scale as functions: no module may take
    the name ``measure``, ``predict`` or ``scale`` (the function would hide the module)."""
    names = set(_modules())
    assert not names & {"bscrit.measure", "bscrit.predict", "bscrit.scale"}
