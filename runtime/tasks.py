"""The four tasks of the kit: what each predicts, from which modality, with which labels and preprocessing.

Torch-free, so training, compression, the bench and the runtime read one definition.
"""

from dataclasses import dataclass

from lungedge.runtime.enums import Modality, TaskKind
from lungedge.runtime.errors import ConfigError, UnknownName
from lungedge.runtime.preprocess import ct_steps, xray_steps

# Mask value of pixels no loss or metric counts (the V7 "ignore" class of xray-seg: devices, markup over the lung).
IGNORE = 255


@dataclass(frozen=True)
class TaskSpec:
    name: str
    modality: Modality
    kind: TaskKind
    labels: tuple
    positive_label: str
    default_arch: str
    default_size: int

    def steps(self, size, equalize=False):
        """Preprocessing steps (runtime.preprocess) for a square input of side ``size``; ``equalize`` adds
        histogram equalisation (X-ray only)."""
        if equalize and self.modality != Modality.XRAY:
            raise ConfigError("histogram equalisation (equalize) is an X-ray option")
        return xray_steps(size, equalize) if self.modality == Modality.XRAY else ct_steps(size)

    @property
    def num_outputs(self):
        return len(self.labels) if self.kind == TaskKind.CLASSIFICATION else 1


TASKS = {
    "xray-cls": TaskSpec("xray-cls", Modality.XRAY, TaskKind.CLASSIFICATION, ("covid", "normal", "pneumonia"), "covid",
                         "densenet121", 128),
    "ct-cls": TaskSpec("ct-cls", Modality.CT, TaskKind.CLASSIFICATION, ("covid", "noncovid"), "covid", "densenet121", 128),
    "xray-seg": TaskSpec("xray-seg", Modality.XRAY, TaskKind.SEGMENTATION, ("background", "lung"), "lung", "unet", 128),
    "ct-seg": TaskSpec("ct-seg", Modality.CT, TaskKind.SEGMENTATION, ("background", "lesion"), "lesion", "unet", 192),
}


def task(name):
    """The spec of task ``name``; ``UnknownName`` (a ``KeyError``) listing the known tasks otherwise."""
    if name not in TASKS:
        raise UnknownName(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]
