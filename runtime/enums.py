"""The kit's closed sets as enums: task kind, modality, backend, precision, artifact key.

Each member *is* its string value (``TaskKind.CLASSIFICATION == "classification"``; ``str()``, f-strings and JSON
give the value), so manifests, results and command lines keep their plain strings while code names the set it
means. ``parse`` turns a value from a manifest, a recipe or a flag into the member, or raises ``UnknownName``
listing what is allowed.
"""

from enum import Enum

from lungedge.runtime.errors import UnknownName


class StrEnum(str, Enum):
    """A string enum that prints, formats and serialises as its value on every Python from 3.8."""

    def __str__(self):
        return str(self.value)

    def __format__(self, spec):
        return format(str(self.value), spec)

    @classmethod
    def values(cls):
        """The values in definition order (for argparse ``choices`` and error messages)."""
        return tuple(m.value for m in cls)

    @classmethod
    def parse(cls, value, what=None, error=UnknownName):
        """The member for ``value`` (a member or its string value); otherwise ``error`` (``UnknownName``, or the
        caller's own, e.g. a config's ``ConfigError``) naming the allowed values."""
        try:
            return cls(value)
        except ValueError:
            raise error(f"unknown {what or cls.__name__} {value!r}; choose one of "
                        f"{', '.join(cls.values())}") from None


class TaskKind(StrEnum):
    CLASSIFICATION = "classification"
    SEGMENTATION = "segmentation"


class Modality(StrEnum):
    XRAY = "xray"
    CT = "ct"


class BackendName(StrEnum):
    """Inference backends; OpenVINO runs the ONNX artifacts built for ONNX Runtime."""

    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"
    TENSORRT = "tensorrt"


class Precision(StrEnum):
    """Artifact precisions, smallest first: the order ``Bundle.find_artifact`` prefers them in."""

    INT8 = "int8"
    FP16 = "fp16"
    FP32 = "fp32"

    @property
    def rank(self):
        """0 for the smallest (int8); sorts artifacts smallest first."""
        return list(Precision).index(self)


class ArtifactKey(StrEnum):
    """Keys of the ONNX artifacts compress writes (engines built on a device get ``engine-<precision>-...``)."""

    ONNX_FP32 = "onnx-fp32"
    ONNX_FP16 = "onnx-fp16"
    ONNX_INT8 = "onnx-int8"  # QDQ for ONNX Runtime on CPU: unsigned activations, per-channel weights
    ONNX_INT8_TRT = "onnx-int8-trt"  # QDQ for TensorRT: signed symmetric activations


def precision_rank(value):
    """Sort key of a precision string; unknown precisions sort last."""
    try:
        return Precision(value).rank
    except ValueError:
        return len(Precision)


# OpenVINO and ONNX Runtime both run ONNX files; the bundle's cpu_default may name either.
ONNX_BACKENDS = (BackendName.ONNXRUNTIME, BackendName.OPENVINO)
