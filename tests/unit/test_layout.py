"""The package's layout rules (docs in the restructure): no import cycle, lazy imports included;
one home per dependency; no catch-all module. Read from the source with ``ast`` (no imports)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "bscrit"
MAX_LINES = 500  #: longest module (lines)
MAX_BODY = 80  #: longest function body (lines, signature and docstring not counted)
MAX_TOP_MODULES = 12  #: modules directly in bscrit/
MIN_PACKAGES = 6  #: sub-packages of bscrit/
#: Where a dependency may be imported at module level ("eager") and anywhere ("lazy", inside a
#: function). Packages absent from both may not import it at all.
HOMES = {
    "typer": {"eager": {"cli"}, "lazy": set()},
    "rich": {"eager": {"report"}, "lazy": set()},
    "torch": {
        "eager": {"engine", "load", "runs", "integrations", "examples"},
        "lazy": {"cli", "workflows", "api"},
    },
    "matplotlib": {"eager": set(), "lazy": {"report"}},
    # never imported directly: typer vendors its own click (0.29) and bscrit does not depend on it
    "click": {"eager": set(), "lazy": set()},
}
#: Pure math and records: never torch, typer, rich or matplotlib, even lazily.
PURE = ("stats", "theory", "artifacts", "specfile", "optim", "checker", "errors", "boundary")


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
        # ("from . import optim" names bscrit.optim.registry; bscrit/__init__ is trivial)
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


def _area(name: str) -> str:
    """bscrit.engine.loop -> engine; bscrit.api -> api; bscrit -> bscrit."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_no_catch_all_module():
    too_long = {}
    for name, path in _modules().items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            too_long[name] = lines
    assert not too_long, too_long


def test_no_long_function_body():
    """A function's body, without its signature and docstring, fits on a screen or two."""
    long = {}
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            body = node.body
            if (
                len(body) > 1
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                body = body[1:]
            n = node.end_lineno - body[0].lineno + 1
            if n > MAX_BODY:
                long[f"{name}.{node.name}"] = n
    assert not long, long


def test_a_few_top_modules_and_layered_packages():
    top = [p for p in PKG.glob("*.py")]
    packages = [p for p in PKG.iterdir() if (p / "__init__.py").is_file()]
    assert len(top) <= MAX_TOP_MODULES, sorted(p.name for p in top)
    assert len(packages) >= MIN_PACKAGES, sorted(p.name for p in packages)


def _used(path: Path) -> tuple[set[str], set[str]]:
    """Top-level packages imported at module level, and inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    eager, lazy = set(), set()

    def names(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Import):
            return {a.name.split(".")[0] for a in node.names}
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            return {node.module.split(".")[0]}
        return set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            (lazy if in_function else eager).update(names(child))
            fn = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            visit(child, in_function or fn)

    visit(tree, False)
    return eager, lazy


def test_one_home_per_dependency():
    for name, path in _modules().items():
        area = _area(name)
        eager, lazy = _used(path)
        for dep, home in HOMES.items():
            if dep in eager:
                assert area in home["eager"], f"{name} imports {dep} at module level"
            if dep in lazy:
                assert area in home["eager"] | home["lazy"], f"{name} imports {dep}"


def test_pure_packages_import_no_heavy_dependency():
    for name, path in _modules().items():
        if _area(name) in PURE:
            eager, lazy = _used(path)
            assert not (eager | lazy) & set(HOMES), f"{name}: {(eager | lazy) & set(HOMES)}"


def test_no_module_named_like_the_api_functions():
    """The Python API exposes bscrit.measure / predict / scale as functions: no module may take
    the name ``measure``, ``predict`` or ``scale`` (the function would hide the module)."""
    names = set(_modules())
    assert not names & {"bscrit.measure", "bscrit.predict", "bscrit.scale"}
