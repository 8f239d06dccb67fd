"""What the benchmark runs: a bundle artifact through the runtime, or a trained torch baseline from its run folder.

Both expose the same small surface, split into the three stages the benchmark times separately:
``prepare(array, meta) -> ((1, H, W) tensor, net_meta)`` (the manifest's preprocessing), ``run(batch) -> raw
output`` (the model alone) and ``postprocess(row, net_meta, meta) -> {"probabilities": (K,)} or {"mask": (H, W)}``
(the runtime's softmax / threshold / undo-letterbox). A bundle goes through ``lungedge.runtime`` exactly as at
the bedside (its ``Predictor``); torch is imported only when a torch baseline is asked for.
"""

import json
import os

import numpy as np

from lungedge.runtime.enums import BackendName, TaskKind
from lungedge.runtime.errors import BundleError

RUNNABLE_BACKENDS = (BackendName.ONNXRUNTIME.value, BackendName.TENSORRT.value)
ENGINE_FORMATS = ("engine", "plan", "trt")
# Ways to run an ONNX artifact on the CPU: ONNX Runtime, or OpenVINO at a pinned inference precision.
CPU_BACKENDS = ("onnxruntime", "openvino-f32", "openvino-bf16")


def openvino_variants():
    """The OpenVINO rows this machine can run: f32, plus bf16 where the CPU has it; () without OpenVINO."""
    from lungedge.runtime.backends.openvino import available_precisions

    return tuple(f"openvino-{p}" for p in available_precisions())


def resolve_backends(requested):
    """CPU backends to time each ONNX artifact on: ``("auto",)`` means ONNX Runtime plus what OpenVINO can do here;
    an explicit name that this machine cannot run is an error, not a skipped row."""
    from lungedge.runtime.errors import BackendUnavailable

    requested = tuple(requested or ("onnxruntime",))
    if requested == ("auto",):
        return ("onnxruntime",) + openvino_variants()
    unknown = [b for b in requested if b not in CPU_BACKENDS]
    if unknown:
        raise BackendUnavailable(f"unknown CPU backend(s) {unknown}; choose from {CPU_BACKENDS} or 'auto'")
    missing = [b for b in requested if b.startswith("openvino") and b not in openvino_variants()]
    if missing:
        raise BackendUnavailable(f"{missing} cannot run here (OpenVINO missing, or no BF16 on this CPU); "
                                 "pip install 'lungedge[openvino]' or leave them out")
    return requested


def backend_spec(cpu_backend):
    """Row-spec keys for a CPU backend name: {} for ONNX Runtime, backend + inference precision for OpenVINO."""
    if cpu_backend == BackendName.ONNXRUNTIME:
        return {}
    return {"backend": "openvino", "inference_precision": cpu_backend.split("-", 1)[1]}


def artifact_runnable(art):
    """True when this machine could run the artifact: ONNX on ONNX Runtime, or an engine where TensorRT imports."""
    if art.get("backend") == BackendName.ONNXRUNTIME:
        return art.get("format", "onnx") == "onnx"
    if art.get("backend") == BackendName.TENSORRT and art.get("format") in ENGINE_FORMATS:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return False
        return True
    return False


def bundle_rows(path, artifact=None):
    """[(bundle path, artifact key)] to benchmark: the named artifact, or every artifact runnable here."""
    from lungedge.runtime.bundle import Bundle

    manifest = Bundle.load(path, verify=False).manifest
    arts = manifest["artifacts"]
    if artifact is not None:
        if artifact not in arts:
            raise BundleError(f"bundle {path} has no artifact {artifact!r}; it has {sorted(arts)}")
        return [(path, artifact)]
    keys = [k for k in sorted(arts) if artifact_runnable(arts[k])]
    if not keys:
        raise BundleError(f"bundle {path} has no artifact this machine can run "
                          f"({ {k: (a['backend'], a.get('format')) for k, a in arts.items()} })")
    return [(path, k) for k in keys]


def parse_variant(text):
    """``PATH`` or ``PATH:ARTIFACT`` (an artifact key of the bundle's manifest) -> (path, key or None)."""
    if ":" in text and not os.path.exists(text):
        path, _, key = text.rpartition(":")
        return path, key
    return text, None


class BundleRunner:
    """One artifact of a verified bundle on its runtime backend."""

    kind = "bundle"

    def __init__(self, path, artifact, threads=None, device=0, name=None, backend=None, inference_precision="f32"):
        from lungedge.runtime.backends import create_backend
        from lungedge.runtime.bundle import Bundle
        from lungedge.runtime.predictor import Predictor

        bundle = Bundle.load(path)
        art = bundle.manifest["artifacts"][artifact]
        if backend == BackendName.OPENVINO:  # the same ONNX file on OpenVINO, precision pinned
            opts = {"threads": threads, "precision": inference_precision, "cache_dir": bundle.cache_dir("openvino")}
        elif art["backend"] == BackendName.ONNXRUNTIME:
            backend, opts = "onnxruntime", {"threads": threads}
        else:
            backend, opts = art["backend"], {"entry": art, "device": device}
        self.predictor = Predictor(bundle, create_backend(backend, bundle.path_of(artifact), **opts), artifact)
        m = bundle.manifest
        self.manifest = m
        self.path, self.artifact = path, artifact
        suffix = f"@openvino-{self.predictor.backend.precision}" if backend == BackendName.OPENVINO else ""
        self.name = name or f"{m['name']}:{artifact}{suffix}"
        self.task, self.modality = m["task"], m["modality"]
        self.labels, self.positive_label = list(m["labels"]), m.get("positive_label")
        self.steps = m["preprocessing"]
        self.info = {"kind": "bundle", "bundle": os.path.abspath(path), "bundle_name": m["name"], "artifact": artifact,
                     "backend": backend, "precision": art["precision"], "format": art.get("format"),
                     "model_path": bundle.path_of(artifact), "bytes": int(os.path.getsize(bundle.path_of(artifact))),
                     "threads": threads, "input_size": list(bundle.input_size)}
        if backend == BackendName.OPENVINO:
            self.info["inference_precision"] = self.predictor.backend.precision

    @property
    def stored_threshold(self):
        """The operating threshold the bundle ships (this artifact's own, else the manifest's), or None."""
        if self.task != TaskKind.CLASSIFICATION or self.positive_label is None:
            return None
        art = self.manifest["artifacts"][self.artifact]
        if art.get("threshold") is not None:
            return float(art["threshold"])
        value = (self.manifest.get("thresholds") or {}).get(self.positive_label)
        return None if value is None else float(value)

    @property
    def input_crop(self):
        return self.manifest.get("input_crop")

    def prepare(self, array, meta):
        return self.predictor.prepare(array, meta, {"file": "benchmark"})

    def run(self, batch):
        return self.predictor.backend.run(batch)

    def postprocess(self, row, net_meta, meta):
        if self.task == TaskKind.CLASSIFICATION:
            probs = self.predictor.classify(row)["probabilities"]
            return {"probabilities": np.array([probs[label] for label in self.labels], np.float64)}
        return {"mask": self.predictor.segment(row, net_meta, meta)["mask"]}

    def close(self):
        self.predictor.close()


class TorchRunner:
    """A trained baseline (``best.pt`` + ``config.json``) in torch FP32 on the CPU, preprocessed by the runtime."""

    kind = "torch"

    def __init__(self, run_dir, threads=None, name=None, which="best.pt"):
        import torch

        from lungedge.models.train import load_model
        from lungedge.runtime.tasks import task

        if threads:
            torch.set_num_threads(int(threads))
        self._torch = torch
        self.model, cfg = load_model(run_dir, which)
        with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as fh:
            config = json.load(fh)
        self.input_crop = config.get("input_crop")
        spec = task(cfg.task)
        self.stored_threshold = None  # the validation threshold recorded by lungedge train, when present
        metrics_path = os.path.join(run_dir, "metrics.json")
        if spec.kind == TaskKind.CLASSIFICATION and os.path.isfile(metrics_path):
            with open(metrics_path, encoding="utf-8") as fh:
                value = (json.load(fh).get("val") or {}).get("threshold")
            self.stored_threshold = None if value is None else float(value)
        self.task, self.modality = spec.kind, spec.modality
        self.labels = list(spec.labels)
        self.positive_label = spec.positive_label if spec.kind == TaskKind.CLASSIFICATION else None
        self.steps = config.get("preprocessing") or spec.steps(cfg.size)
        self.size = cfg.size
        self.mask_threshold = 0.5  # the threshold models.train.evaluate scores segmentation at
        self.path, self.artifact = run_dir, which
        self.name = name or f"{cfg.task}-{cfg.arch}:torch-fp32"
        weights = os.path.join(run_dir, which)
        self.info = {"kind": "torch", "run_dir": os.path.abspath(run_dir), "arch": cfg.arch, "task_name": cfg.task,
                     "backend": "torch", "precision": "fp32", "format": "pytorch", "model_path": weights,
                     "bytes": int(os.path.getsize(weights)), "threads": threads or torch.get_num_threads(),
                     "input_size": [cfg.size, cfg.size]}

    def prepare(self, array, meta):
        from lungedge.runtime.preprocess import preprocess

        return preprocess(array, meta, self.steps)

    def run(self, batch):
        with self._torch.no_grad():
            return self.model(self._torch.from_numpy(np.ascontiguousarray(batch, np.float32))).numpy()

    def postprocess(self, row, net_meta, meta):
        import cv2

        from lungedge.runtime.predictor import sigmoid, softmax
        from lungedge.runtime.preprocess import undo_letterbox

        if self.task == TaskKind.CLASSIFICATION:
            return {"probabilities": softmax(np.asarray(row, np.float64).ravel())}
        mask = (sigmoid(np.asarray(row[0], np.float32)) >= self.mask_threshold).astype(np.uint8)
        box = net_meta.get("letterbox")
        if box is None:
            h, w = meta["shape"][-2:]
            return {"mask": cv2.resize(mask, (int(w), int(h)), interpolation=cv2.INTER_NEAREST)}
        if mask.shape != (self.size, self.size):
            mask = cv2.resize(mask, (self.size, self.size), interpolation=cv2.INTER_NEAREST)
        return {"mask": undo_letterbox(mask, box)}

    def close(self):
        self.model = None


def open_runner(spec, threads=None):
    """Runner for a row spec: ``{"torch_run": DIR}`` or ``{"bundle": PATH, "artifact": KEY}`` (+ optional name,
    and ``"backend": "openvino", "inference_precision": "f32" | "bf16"`` to run an ONNX artifact on OpenVINO)."""
    if "torch_run" in spec:
        return TorchRunner(spec["torch_run"], threads=threads, name=spec.get("name"))
    return BundleRunner(spec["bundle"], spec["artifact"], threads=threads, name=spec.get("name"),
                        backend=spec.get("backend"), inference_precision=spec.get("inference_precision", "f32"))


def predict_one(runner, array, meta):
    """Prepare, run and post-process one image (what an inference process does per request)."""
    tensor, net_meta = runner.prepare(array, meta)
    out = runner.run(tensor[None])
    return runner.postprocess(out[0], net_meta, meta)
