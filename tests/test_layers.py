"""The packages import one way (docs/DESIGN.md, "Layout and layers"), checked on the source:
`explorer` (the Ray-free core) imports no other kdx package; `trainables` and `analysis` import
`explorer` only; `kdx` (the command) composes them. Plain imports, `importlib.import_module` and
`__import__` all count, and so does a string naming another package's module. Inside the packages,
no two files import each other, directly or round a longer circle (imports inside functions
included), and no function is longer than about 60 lines: code is split by concept, not by size."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("explorer", "trainables", "analysis", "kdx")
ALLOWED = {"explorer": set(), "trainables": {"explorer"}, "analysis": {"explorer"},
           "kdx": {"explorer", "trainables", "analysis"}}
MAX_FUNCTION_LINES = 60


def imported_packages(path: Path) -> dict[str, int]:
    """kdx packages `path` refers to, each with the first line that does."""
    src = path.read_text()
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(src)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Call):
            func = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if func in ("import_module", "__import__"):
                names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # a dotted module name in a string (not `kdx.`: MLflow tags and loggers are named kdx.*)
            names = re.findall(r"^((?:explorer|trainables|analysis)\.[a-z_.]+)$", node.value)
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES:
                found.setdefault(top, node.lineno)
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_one_way(package):
    wrong = [f"{p.relative_to(ROOT)}:{line} imports {other}"
             for p in sources(package) for other, line in imported_packages(p).items()
             if other != package and other not in ALLOWED[package]]
    assert not wrong, wrong


def test_the_checker_sees_every_form_of_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import importlib\nfrom trainables.plan import Plan\nimportlib.import_module('analysis.runs')\n"
                   "__import__('kdx.cli')\nimport explorer.training.loop\n")
    assert set(imported_packages(bad)) == {"trainables", "analysis", "kdx", "explorer"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def file_imports(path: Path) -> set[str]:
    """The kdx modules `path` imports (at any depth of the file: lazy imports count), resolved to
    files: `from a.b import c` names module a.b.c where that is a file, else a.b."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [[a.name] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            candidates = [[f"{base}.{a.name}", base] for a in node.names]
        else:
            continue
        for names in candidates:
            for name in names:
                if name.split(".")[0] in PACKAGES and module_path(name) is not None:
                    out.add(name)
                    break
    return out - {here}


def module_path(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): file_imports(p) for package in PACKAGES for p in sources(package)}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one file (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_two_files_import_each_other():
    assert cycles(import_graph()) == []


def room(module: str) -> str:
    """The sub-package a module of `explorer` lives in (explorer.training, explorer.data, ...), or the
    module itself for the top-level ones (explorer.config, explorer.errors, ...) and other packages."""
    parts = module.split(".")
    if parts[0] == "explorer" and len(parts) > 1 and (ROOT / "explorer" / parts[1]).is_dir():
        return ".".join(parts[:2])
    return module


def test_explorer_sub_packages_import_one_way():
    """data, models, methods, teachers, training, spec, cli: no two sub-packages import each other."""
    rooms: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        rooms.setdefault(room(module), set()).update(room(t) for t in targets if room(t) != room(module))
    assert cycles(rooms) == []
    assert "explorer.training" not in rooms["explorer.teachers"]  # the store is handed the loop


def test_the_cycle_checker_finds_a_lazy_circle():
    graph = {"explorer.a": {"explorer.b"}, "explorer.b": {"explorer.c"}, "explorer.c": {"explorer.a"},
             "explorer.d": {"explorer.a"}}
    assert cycles(graph) == [["explorer.a", "explorer.b", "explorer.c"]]
    # an import inside a function, relative or absolute, is an arrow like any other
    lazy = ROOT / "explorer" / "training" / "loop.py"
    assert "explorer.methods" in file_imports(lazy)
    src = ast.parse("def f():\n    from explorer.teachers import store\n")
    assert any(isinstance(n, ast.ImportFrom) for n in ast.walk(src))


def long_functions(path: Path) -> list[tuple[str, int]]:
    return [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]


@pytest.mark.parametrize("package", PACKAGES)
def test_functions_stay_short(package):
    long = [f"{p.relative_to(ROOT)}: {name} ({n} lines)" for p in sources(package) for name, n in long_functions(p)]
    assert not long, long


def test_the_length_checker_counts_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    src = tmp_path / "long.py"
    src.write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert long_functions(src) == [("long", MAX_FUNCTION_LINES + 1)]
