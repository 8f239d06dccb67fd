"""The runtime stands alone: no torch, no lungedge.compress/models, Python 3.8 syntax and stdlib only."""

import ast
import os
import subprocess
import sys
import textwrap

import cv2
from tinymodels import square_image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNTIME = os.path.join(REPO, "runtime")
# What a Jetson runs: the runtime, the metrics it may score with, and the entry point.
JETSON_SIDE = (RUNTIME, os.path.join(REPO, "metrics"), os.path.join(REPO, "cli", "main.py"))
FORBIDDEN = ("torch", "torchvision", "lungedge.compress", "lungedge.models", "lungedge.benchmarks")


def _imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_runtime_sources_import_nothing_forbidden():
    bad = []
    for folder, _, files in os.walk(RUNTIME):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                bad += [(path, m) for m in _imports(path)
                        if any(m == f or m.startswith(f + ".") for f in FORBIDDEN) or m.split(".")[0] in
                        ("runtime", "compress", "models", "benchmarks")]
    assert not bad


def test_prediction_leaves_torch_unloaded(xray_cls_bundle, xray_lung_bundle, tmp_path):
    image = str(tmp_path / "chest.png")
    cv2.imwrite(image, square_image())
    script = textwrap.dedent(f"""
        import sys
        import lungedge.runtime
        from lungedge.runtime.cli import main
        from lungedge.runtime.pipelines import XrayPipeline
        from lungedge.runtime.predictor import Predictor
        pipe = XrayPipeline(Predictor.from_bundle({xray_cls_bundle!r}),
                            Predictor.from_bundle({xray_lung_bundle!r}))
        result = pipe.predict({image!r})
        assert result["label"], result
        assert main(["infer", {image!r}, "--bundle", {xray_cls_bundle!r}, "--out", {str(tmp_path / "out")!r}]) == 0
        assert main(["selftest", {xray_cls_bundle!r}]) == 0
        loaded = [m for m in sys.modules if m.split(".")[0] == "torch" or m.startswith(("lungedge.compress",
                  "lungedge.models", "lungedge.benchmarks"))]
        assert "torch" not in sys.modules and not loaded, loaded
        print("torch-free")
    """)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "torch-free" in proc.stdout


def test_jetson_side_is_python_38_compatible():
    # vermin has no __main__ module; call its console-script entry point.
    code = "import sys; from vermin import main; sys.argv[0] = 'vermin'; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", code, "-t=3.8-", "--no-tips", "--violations", *JETSON_SIDE],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
