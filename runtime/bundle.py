"""Bundle: a folder with ``manifest.json`` and model files; the one contract between compress and runtime.

Manifest (schema version 1), plain data in the spirit of MONAI's ``network_data_format``::

    schema_version  1
    name            "xray-cls-resnet18-int8"
    task            "classification" | "segmentation"
    modality        "xray" | "ct"
    input           {"name": "image", "shape": [-1, 1, H, W], "dtype": "float32", "value_range": [lo, hi]}
    output          {"name": "logits", "kind": "logits", "shape": [-1, C] or [-1, C, H, W]}
    preprocessing   [{"op": "scale_to_unit", ...}, {"op": "letterbox", "size": [H, W]}, ...]
    labels          ["covid", "normal", "pneumonia"]  (segmentation: ["background", "lung"])
    positive_label  "covid"  (the label the operating threshold applies to)
    thresholds      {"covid": 0.42} (classification) or {"mask": 0.5} (segmentation)
    artifacts       {"onnx-fp32": {"path": "model.onnx", "sha256": ..., "bytes": ..., "format": "onnx",
                     "precision": "fp32", "backend": "onnxruntime"}, ...}
    golden          optional: {"path": "golden.npz", "sha256": ..., "tolerances": {"fp32": 1e-4, ...}}
    provenance      {"baseline": ..., "recipe": {...}, "calibration": {...}, "git_commit": ..., "created": ...}
    metrics         {"val": {...}, "test": {...}, "gate": [...]}
    quality         optional input quality control (lungedge.runtime.quality, lungedge.runtime.ood):
                    {"view": "frontal" | "any", "min_age_years": N, "pixel": {check: {"min_refuse", ...}},
                     "ood": {artifact key: {"path": "ood-<key>.npz", "sha256", "feature_output",
                             "thresholds": {"mahalanobis", "energy"} (or one of them), "acceptance",
                             "rule": "pooled_then_relax", "min_source_acceptance",
                             "val_accepted_by_source": {source: {"accepted", "n", "rate"}}, ...}},
                     "area": {label: [low, high] fraction of the image},
                     "lung_fields": {"segmenter", "segmenter_manifest_sha256", "acceptance", "fitted_on",
                                     "bands": {statistic: {"min", "max"}}},  (lungedge.runtime.lung_fields)
                     "modality_check": {"descriptor", "other_modality", "mean", "scale", "weights", "bias",
                                        "threshold", "acceptance", "fitted_on", ...},
                                        (lungedge.runtime.modality_check)
                     "orientation_check": {"descriptor", "acceptance", "fitted_on",
                                           "checks": {"inverted" | "rotated": {"mean", "scale", "weights",
                                                                              "bias", "threshold", ...}}}}
                                        (lungedge.runtime.orientation_check)
                    Without "ood" for the artifact that runs, results say the bundle has no
                    out-of-distribution check; without "lung_fields", X-ray pipeline results say
                    the bundle has no lung-field check; without "modality_check" or
                    "orientation_check", results say so (thresholds.<check>.checked false).
"""

import hashlib
import json
import os

from lungedge.runtime.enums import ONNX_BACKENDS, BackendName, Modality, TaskKind, precision_rank
from lungedge.runtime.errors import BundleError
from lungedge.runtime.lung_fields import validate_lung_fields
from lungedge.runtime.preprocess import check_steps
from lungedge.runtime.quality import validate_quality_spec

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TASKS = TaskKind.values()
MODALITIES = Modality.values()
REQUIRED = ("schema_version", "name", "task", "modality", "input", "output", "preprocessing", "labels",
            "thresholds", "artifacts", "provenance")
OPTIONAL = ("positive_label", "golden", "metrics", "description", "input_crop", "quality", "cpu_default")
CPU_DEFAULT_BACKENDS = tuple(b.value for b in ONNX_BACKENDS)


def sha256_file(path, chunk=1 << 20):
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_entry(bundle_dir, path, fmt, precision, backend, **extra):
    """Describe one file in the bundle (path relative to the bundle) with its size and sha256."""
    full = os.path.join(bundle_dir, path)
    entry = {"path": path, "sha256": sha256_file(full), "bytes": os.path.getsize(full), "format": fmt,
             "precision": precision, "backend": backend}
    entry.update(extra)
    return entry


def runs_on(art, backend):
    """True when artifact entry ``art`` is for ``backend``; OpenVINO takes the ONNX files made for ONNX Runtime."""
    if backend == BackendName.OPENVINO:
        return art["backend"] in ONNX_BACKENDS and art.get("format", "onnx") == "onnx"
    return art["backend"] == backend


def validate_manifest(manifest):
    """Raise BundleError naming the first problem in a manifest dict."""
    if not isinstance(manifest, dict):
        raise BundleError("manifest.json must hold a JSON object")
    version = manifest.get("schema_version")
    if not isinstance(version, int):
        raise BundleError("manifest has no integer schema_version")
    if version > SCHEMA_VERSION:
        raise BundleError(f"bundle schema {version} is newer than this lungedge understands ({SCHEMA_VERSION}); "
                          "upgrade lungedge")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise BundleError(f"manifest lacks {missing}")
    unknown = sorted(set(manifest) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise BundleError(f"manifest has unknown keys {unknown}")
    if manifest["task"] not in TASKS:
        raise BundleError(f"task {manifest['task']!r} is not one of {TASKS}")
    if manifest["modality"] not in MODALITIES:
        raise BundleError(f"modality {manifest['modality']!r} is not one of {MODALITIES}")
    shape = manifest["input"].get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and shape[1] == 1):
        raise BundleError(f"input shape must be [N, 1, H, W], got {shape}")
    if not manifest["labels"]:
        raise BundleError("manifest has no labels")
    if not isinstance(manifest["preprocessing"], list):
        raise BundleError("preprocessing must be a list of steps")
    check_steps(manifest["preprocessing"])
    if not manifest["artifacts"]:
        raise BundleError("manifest lists no artifacts")
    for key, art in manifest["artifacts"].items():
        for field in ("path", "sha256", "format", "precision", "backend"):
            if field not in art:
                raise BundleError(f"artifact {key!r} lacks {field!r}")
        if os.path.isabs(art["path"]) or ".." in art["path"].replace("\\", "/").split("/"):
            raise BundleError(f"artifact {key!r} path {art['path']!r} escapes the bundle")
    if "quality" in manifest:
        validate_quality_spec(manifest["quality"], manifest["modality"])
        for key, entry in (manifest["quality"].get("ood") or {}).items():
            if key not in manifest["artifacts"]:
                raise BundleError(f"quality.ood names artifact {key!r}, which the bundle does not have")
            if os.path.isabs(entry.get("path", "")) or ".." in entry.get("path", "").replace("\\", "/").split("/"):
                raise BundleError(f"quality.ood[{key!r}] path escapes the bundle")
        if "lung_fields" in manifest["quality"]:
            validate_lung_fields(manifest["quality"]["lung_fields"])
    _check_cpu_default(manifest)


def _check_cpu_default(manifest):
    """``cpu_default`` (optional): the measured choice of CPU artifact and backend; it must name what exists."""
    choice = manifest.get("cpu_default")
    if choice is not None and not isinstance(choice, dict):
        raise BundleError("cpu_default must be an object (artifact, backend, inference_precision, ...)")
    if choice is None or choice.get("artifact") is None:
        return  # absent, or recorded as "nothing passed": the runtime then needs an explicit backend
    if choice["artifact"] not in manifest["artifacts"]:
        raise BundleError(f"cpu_default names artifact {choice['artifact']!r}, which the manifest does not list")
    if choice.get("backend") not in CPU_DEFAULT_BACKENDS:
        raise BundleError(f"cpu_default backend {choice.get('backend')!r} is not one of {CPU_DEFAULT_BACKENDS}")
    if choice["backend"] == BackendName.OPENVINO and choice.get("inference_precision") not in ("f32", "bf16"):
        raise BundleError(f"cpu_default on openvino needs inference_precision f32 or bf16, "
                          f"got {choice.get('inference_precision')!r}")
    threads = choice.get("threads")
    if threads is not None and not (isinstance(threads, int) and not isinstance(threads, bool) and threads > 0):
        raise BundleError(f"cpu_default threads must be a positive integer, got {threads!r}")


def find_artifact(artifacts, backend, precision=None):
    """Key of the artifact in ``artifacts`` (a manifest's entries) for ``backend`` (and ``precision`` if given),
    the smallest precision first: what the runtime opens by default.

    OpenVINO runs the ONNX artifacts (recorded for "onnxruntime"), so ``backend="openvino"`` finds those.
    """
    keys = [k for k, a in artifacts.items() if runs_on(a, backend) and (precision is None or a["precision"] == precision)]
    if not keys:
        have = sorted({(a["backend"], a["precision"]) for a in artifacts.values()})
        raise BundleError(f"bundle has no {backend} artifact" + (f" at {precision}" if precision else "")
                          + f"; it has {have}")
    return sorted(keys, key=lambda k: precision_rank(artifacts[k]["precision"]))[0]


class Bundle:
    """A loaded, verified bundle: ``manifest`` (dict) and ``path_of(key)`` for its files."""

    def __init__(self, root, manifest, manifest_sha256=None):
        self.root = root
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256  # of manifest.json as read (identifies the bundle)

    @classmethod
    def load(cls, root, verify=True):
        """Read and validate the manifest; with ``verify`` check every artifact's sha256 (tamper check)."""
        mpath = os.path.join(root, MANIFEST)
        if not os.path.isfile(mpath):
            raise BundleError(f"{root!r} is not a bundle: no {MANIFEST}")
        try:
            with open(mpath, encoding="utf-8") as fh:
                manifest = json.load(fh)
        except (OSError, ValueError) as exc:
            raise BundleError(f"cannot read {mpath}: {exc}") from None
        validate_manifest(manifest)
        bundle = cls(root, manifest, sha256_file(mpath))
        if verify:
            bundle.verify()
        return bundle

    def verify(self):
        """Check each artifact (and the golden file) exists and matches its recorded sha256."""
        entries = dict(self.manifest["artifacts"])
        if self.manifest.get("golden"):
            entries["golden"] = self.manifest["golden"]
        for key, entry in ((self.manifest.get("quality") or {}).get("ood") or {}).items():
            entries[f"quality.ood[{key}]"] = entry
        for key, art in entries.items():
            path = os.path.join(self.root, art["path"])
            if not os.path.isfile(path):
                raise BundleError(f"artifact {key!r} missing: {path}")
            if sha256_file(path) != art["sha256"]:
                raise BundleError(f"artifact {key!r} ({art['path']}) fails its sha256 check: the file was changed "
                                  "or truncated; re-copy the bundle or rebuild it")

    def path_of(self, key):
        return os.path.join(self.root, self.manifest["artifacts"][key]["path"])

    def find_artifact(self, backend, precision=None):
        """Key of the artifact for ``backend`` (and ``precision`` if given); the smallest-precision first."""
        return find_artifact(self.manifest["artifacts"], backend, precision)

    def cpu_default(self):
        """(artifact key, backend, inference precision, threads or None) measured fastest among gate-passing CPU
        variants. BundleError when the manifest records no such choice (older bundles, or nothing passed)."""
        choice = self.manifest.get("cpu_default") or {}
        if not choice.get("artifact"):
            raise BundleError("this bundle records no measured CPU default (cpu_default); choose a backend "
                              "explicitly (--backend onnxruntime or openvino), or rebuild it with lungedge compress")
        threads = choice.get("threads")
        return (choice["artifact"], choice["backend"], choice.get("inference_precision") or "f32",
                int(threads) if threads else None)

    def cache_dir(self, kind):
        """Folder for caches a backend may write (compiled blobs): ``<bundle>/cache/<kind>``, not checksummed."""
        return os.path.join(self.root, "cache", kind)

    @property
    def input_size(self):
        shape = self.manifest["input"]["shape"]
        return int(shape[2]), int(shape[3])


def write_manifest(root, manifest):
    """Validate and write ``manifest.json`` (sorted keys, stable diffs)."""
    validate_manifest(manifest)
    with open(os.path.join(root, MANIFEST), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.write("\n")
