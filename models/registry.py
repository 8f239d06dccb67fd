"""Architecture registry: a plain dict from name to (builder, kind)."""

from lungedge.models import classifiers, segmenters
from lungedge.models.errors import UnknownArchitecture

CLASSIFIERS = {
    "resnet18": classifiers.resnet18,
    "resnet50": classifiers.resnet50,
    "densenet121": classifiers.densenet121,
    "efficientnet_b0": classifiers.efficientnet_b0,
    "mobilenet_v2": classifiers.mobilenet_v2,
    "student_s": classifiers.student_s,
    "student_m": classifiers.student_m,
}
SEGMENTERS = {
    "unet": segmenters.unet,
    "attention_unet": segmenters.attention_unet,
    "unet_plus_plus": segmenters.unet_plus_plus,
    "unet_student": segmenters.unet_student,
    "unet_student_m": segmenters.unet_student_m,
    "unet_student_l": segmenters.unet_student_l,
}
ARCHITECTURES = {**{k: (v, "classification") for k, v in CLASSIFIERS.items()},
                 **{k: (v, "segmentation") for k, v in SEGMENTERS.items()}}


def build(name, num_classes):
    """Instantiate a registered architecture; unknown names list the known ones."""
    return _entry(name)[0](num_classes)


def kind_of(name):
    """'classification' or 'segmentation'."""
    return _entry(name)[1]


def _entry(name):
    if name not in ARCHITECTURES:
        raise UnknownArchitecture(f"unknown architecture {name!r}; use one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]
