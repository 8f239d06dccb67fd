"""``TrainConfig``: the options of a baseline training run, as written into its ``config.json``."""

import dataclasses
from dataclasses import dataclass

from lungedge.models.data import AUGMENT_LEVELS
from lungedge.models.errors import TrainConfigError
from lungedge.runtime.configs import config_from_dict
from lungedge.runtime.tasks import task

BALANCE_MODES = ("", "source")


@dataclass(frozen=True)
class TrainConfig:
    task: str
    data: str
    arch: str = ""
    size: int = 0
    epochs: int = 15
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    patience: int = 5
    seed: int = 0
    threads: int = 0
    augment: bool = True
    augment_level: str = "standard"  # a key of models.data.AUGMENT_LEVELS
    balance: str = ""  # "" (shuffle) or "source": sample so no (source, label) cell dominates
    lung_bundle: str = ""  # X-ray segmentation bundle: classify lung crops (runtime.pipelines.LungCrop)
    lung_margin: float = 0.05
    equalize: bool = False  # histogram-equalise X-rays before the letterbox (a recorded preprocessing step)

    @classmethod
    def from_dict(cls, d):
        return config_from_dict(cls, d, TrainConfigError, "fix config.json or the training flags")

    def resolved(self):
        """Fill the task's default architecture and input size."""
        spec = task(self.task)
        return dataclasses.replace(self, arch=self.arch or spec.default_arch, size=self.size or spec.default_size)


def check_options(cfg, spec):
    """Raise TrainConfigError (a ValueError) for options that do not fit the task."""
    if cfg.augment_level not in AUGMENT_LEVELS:
        raise TrainConfigError(f"augment_level {cfg.augment_level!r}; use one of {sorted(AUGMENT_LEVELS)}")
    if cfg.balance not in BALANCE_MODES:
        raise TrainConfigError(f"balance {cfg.balance!r}; use one of {list(BALANCE_MODES)}")
    if cfg.lung_bundle and (spec.kind, spec.modality) != ("classification", "xray"):
        raise TrainConfigError("lung_bundle (lung crops) applies to X-ray classification only; drop --lung-bundle")
