"""The four tasks of the kit: what each predicts, from which modality, with which labels and preprocessing."""

from dataclasses import dataclass

from lungedge.models.errors import TrainConfigError, UnknownTask
from lungedge.runtime.preprocess import ct_steps, xray_steps


@dataclass(frozen=True)
class TaskSpec:
    name: str
    modality: str  # "xray" | "ct"
    kind: str  # "classification" | "segmentation"
    labels: tuple
    positive_label: str
    default_arch: str
    default_size: int

    def steps(self, size, equalize=False):
        """Preprocessing steps (runtime.preprocess) for a square input of side ``size``; ``equalize`` adds
        histogram equalisation (X-ray only)."""
        if equalize and self.modality != "xray":
            raise TrainConfigError("histogram equalisation (equalize) is an X-ray option; leave it off for CT")
        return xray_steps(size, equalize) if self.modality == "xray" else ct_steps(size)

    @property
    def num_outputs(self):
        return len(self.labels) if self.kind == "classification" else 1


TASKS = {
    "xray-cls": TaskSpec("xray-cls", "xray", "classification", ("covid", "normal", "pneumonia"), "covid",
                         "densenet121", 128),
    "ct-cls": TaskSpec("ct-cls", "ct", "classification", ("covid", "noncovid"), "covid", "densenet121", 128),
    "xray-seg": TaskSpec("xray-seg", "xray", "segmentation", ("background", "lung"), "lung", "unet", 128),
    "ct-seg": TaskSpec("ct-seg", "ct", "segmentation", ("background", "lesion"), "lesion", "unet", 192),
}


def task(name):
    """The TaskSpec of a task name."""
    if name not in TASKS:
        raise UnknownTask(f"unknown task {name!r}; use one of {sorted(TASKS)}")
    return TASKS[name]
