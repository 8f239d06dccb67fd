"""The machine and software a benchmark ran on: CPU, cores, memory, library versions, Jetson release, git commit."""

import os
import platform
import sys

LIBRARIES = ("numpy", "onnxruntime", "onnxruntime-gpu", "onnx", "opencv-python-headless", "opencv-python", "torch",
             "torch-pruning", "openvino", "tensorrt", "pycuda", "matplotlib", "lungedge")


def _read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def cpu_model():
    """CPU model name from /proc/cpuinfo (x86 'model name', Arm 'Hardware'/'CPU part'), else platform's guess."""
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Hardware", "Model"):
        for line in text.splitlines():
            if line.startswith(key) and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_total_mb():
    text = _read("/proc/meminfo") or ""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return None


def library_versions():
    """Installed versions of the libraries that shape the numbers (read from metadata, nothing imported)."""
    from importlib import metadata

    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if "tensorrt" not in out and "tensorrt" in sys.modules:  # JetPack's python3-libnvinfer has no pip metadata
        out["tensorrt"] = getattr(sys.modules["tensorrt"], "__version__", "unknown")
    return out


def ort_providers():
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.get_available_providers()


def jetson_info():
    """Jetson model, L4T release and power mode; None off a Jetson."""
    model = _read("/proc/device-tree/model")
    release = _read("/etc/nv_tegra_release")
    if not model and not release:
        return None
    from lungedge.benchmarks.tegrastats import query_nvpmodel

    return {"model": model.strip("\x00\n ") if model else None,
            "l4t_release": release.splitlines()[0].strip() if release else None, "nvpmodel": query_nvpmodel()}


def describe(threads=None):
    """Everything worth knowing to reproduce or compare a run."""
    from lungedge.runtime.provenance import git_commit

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {"cpu_model": cpu_model(), "logical_cpus": os.cpu_count(), "cpus_available": affinity,
            "threads": threads, "memory_total_mb": memory_total_mb(), "machine": platform.machine(),
            "os": platform.platform(), "python": sys.version.split()[0], "libraries": library_versions(),
            "onnxruntime_providers": ort_providers(), "jetson": jetson_info(), "git_commit": git_commit()}
