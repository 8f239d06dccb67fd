"""Package layout: pyproject's package list matches the folders, layers import only downward, no bare root imports.

The layers, bottom-up (README, "Layout"); a module may import its own package and the packages below it, never
above, including imports hidden in strings (importlib tables, ``python -c`` commands):

    1 runtime     numpy, ONNX Runtime: readers, preprocessing, bundles, backends, pipelines, service, DICOM node
    2 metrics     numpy: classification, segmentation, surface, accumulators, bootstrap, calibration
    3 models      torch: blocks, architectures, registry, data, losses, training
    4 compress    recipe, stages, gate, assemble, pipeline, engine
    5 benchmarks  runners, latency, memory, accuracy, reports; takes bundles, never builds them
    6 cli         the ``lungedge`` entry point (lazy per extra) and the demo
"""

import ast
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ("runtime", "metrics", "models", "compress", "benchmarks", "cli")
ROOTS = tuple(sorted(LAYERS))
RANK = {name: rank for rank, name in enumerate(LAYERS, 1)}

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


MODULE_NAME = re.compile(r"^lungedge(\.[A-Za-z_][A-Za-z0-9_]*)+$")
IMPORT_IN_CODE = re.compile(r"(?:^|[;\s])(?:from|import)\s+(lungedge(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def imports_in_source(source, filename="<source>"):
    """Every module a source imports: import statements, plus strings that name a lungedge module (importlib
    tables, ``import_module("lungedge.x")``) or hold code that imports one (``python -c "from lungedge.x ..."``)."""
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if MODULE_NAME.match(node.value):
                yield node.value
            else:
                yield from IMPORT_IN_CODE.findall(node.value)


def imports_of(path):
    with open(path, encoding="utf-8") as fh:
        return list(imports_in_source(fh.read(), path))


def upward_imports(top, source, filename="<source>"):
    """(module, its layer) for each lungedge import in ``source`` (a module of layer ``top``) that goes up."""
    found = []
    for mod in imports_in_source(source, filename):
        parts = mod.split(".")
        if parts[0] == "lungedge" and len(parts) > 1 and parts[1] in RANK and RANK[parts[1]] > RANK[top]:
            found.append((mod, parts[1]))
    return found


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


def test_metrics_are_numpy_only():
    for path in python_files("metrics"):
        assert not [m for m in imports_of(path) if m.split(".")[0] in ("torch", "sklearn", "scipy", "cv2")], path


@pytest.mark.parametrize("top", LAYERS)
def test_layers_import_only_downward(top):
    bad = []
    for path in python_files(top):
        with open(path, encoding="utf-8") as fh:
            bad += [f"{os.path.relpath(path, ROOT)} imports {mod} (layer {RANK[layer]} {layer}, above "
                    f"{RANK[top]} {top})" for mod, layer in upward_imports(top, fh.read(), path)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("top, source", [
    ("runtime", "from lungedge.compress.pipeline import compress\n"),
    ("runtime", "import lungedge.benchmarks.bench\n"),
    ("metrics", "def f():\n    from lungedge.models import train\n"),
    ("runtime", "TABLE = {'bench': 'lungedge.benchmarks.cli'}\n"),
    ("compress", "import importlib\nimportlib.import_module('lungedge.benchmarks.metrics')\n"),
    ("benchmarks", "CMD = ['python', '-c', 'import sys; from lungedge.cli.main import main; main()']\n"),
])
def test_a_deliberate_upward_import_is_caught(top, source):
    """The checker above finds an upward import in each form it can take: statement, lazy, table, string code."""
    assert upward_imports(top, source)


@pytest.mark.parametrize("top, source", [
    ("cli", "TABLE = {'train': 'lungedge.models.train'}\n"),
    ("compress", "from lungedge import metrics as M\nfrom lungedge.runtime.bundle import Bundle\n"),
    ("runtime", "from lungedge.runtime.errors import LungedgeError\n'see lungedge.cli.main for the entry point'\n"),
])
def test_downward_and_sideways_within_a_package_are_allowed(top, source):
    assert upward_imports(top, source) == []
