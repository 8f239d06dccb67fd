"""Package layout: pyproject's package list matches the folders, imports run one way, no bare root imports."""

import ast
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOTS = ("benchmarks", "compress", "models", "runtime")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the runtime test venvs read pyproject with this fallback
    tomllib = pytest.importorskip("tomli")


def pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)


def package_folders():
    found = set()
    for top in ROOTS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "__"))]
            if "__init__.py" in filenames:
                rel = os.path.relpath(dirpath, ROOT).replace(os.sep, ".")
                found.add("lungedge." + rel)
    return found


def test_pyproject_packages_match_folders():
    tool = pyproject()["tool"]["setuptools"]
    assert set(tool["packages"]) == package_folders()
    for pkg in tool["packages"]:
        folder = tool["package-dir"][pkg]
        assert os.path.isfile(os.path.join(ROOT, folder, "__init__.py")), pkg
        assert folder.replace("/", ".") == pkg[len("lungedge."):]


def imports_of(path):
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def python_files(top):
    for dirpath, _, filenames in os.walk(os.path.join(ROOT, top)):
        for f in filenames:
            if f.endswith(".py"):
                yield os.path.join(dirpath, f)


@pytest.mark.parametrize("top", ROOTS + ("tests",))
def test_no_bare_root_imports(top):
    for path in python_files(top):
        for mod in imports_of(path):
            assert mod.split(".")[0] not in ROOTS, f"{path} imports bare {mod!r}; use lungedge.{mod}"


def test_runtime_imports_no_torch_compress_or_models():
    banned = ("torch", "torch_pruning", "lungedge.compress", "lungedge.models", "lungedge.benchmarks")
    for path in python_files("runtime"):
        for mod in imports_of(path):
            assert not any(mod == b or mod.startswith(b + ".") for b in banned), f"{path} imports {mod}"


def test_benchmarks_metrics_and_stats_are_numpy_only():
    for name in ("metrics.py", "stats.py"):
        path = os.path.join(ROOT, "benchmarks", name)
        if os.path.exists(path):
            assert not [m for m in imports_of(path) if m.split(".")[0] in ("torch", "sklearn", "scipy")]
