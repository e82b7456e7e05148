"""The packages import one way (../shared/DESIGN.md, "Layout and layers"), checked on the source:
`explorer` (the Ray-free core) imports no other kdx package; `trainables` and `analysis` import
`explorer` only; `kdx` (the command) composes them. Plain imports, `importlib.import_module` and
`__import__` all count, and so does a string naming another package's module."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("explorer", "trainables", "analysis", "kdx")
ALLOWED = {"explorer": set(), "trainables": {"explorer"}, "analysis": {"explorer"},
           "kdx": {"explorer", "trainables", "analysis"}}
MAX_LINES = 400


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
                   "__import__('kdx.cli')\nimport explorer.train\n")
    assert set(imported_packages(bad)) == {"trainables", "analysis", "kdx", "explorer"}


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_stay_small(package):
    long = [f"{p.relative_to(ROOT)} ({n} lines)" for p in sources(package)
            if (n := p.read_text().count("\n")) > MAX_LINES]
    assert not long, long
