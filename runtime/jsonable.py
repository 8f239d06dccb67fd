"""One JSON cleaner for results, manifests and benchmark files, with an explicit policy for non-finite numbers.

JSON has no NaN or infinity, and ``json.dump`` would otherwise write the invalid tokens ``NaN``/``Infinity``:

- ``NonFinite.NULL`` (result JSON, manifests): a non-finite number becomes ``null``: "no value" for a reader
  such as a PACS integration, which must never see a made-up number.
- ``NonFinite.STRING`` (benchmark results): ``"inf"``, ``"-inf"``, ``"nan"``, read back as floats by
  ``from_jsonable``, so a report regenerates from its JSON with the same figures (an RVD against an empty ground
  truth is +inf on purpose).

Everything else: numpy scalars become Python numbers, tuples lists, enums their values, keys strings; numpy arrays
become lists, or are dropped from dicts with ``drop_arrays`` (results carry masks beside, not inside, the JSON).
"""

import math
from enum import Enum

import numpy as np

from lungedge.runtime.enums import StrEnum


class NonFinite(StrEnum):
    NULL = "null"
    STRING = "string"


_AS_STRING = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _float(value, policy):
    if math.isfinite(value):
        return value
    if policy == NonFinite.NULL:
        return None
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def to_jsonable(obj, nonfinite=NonFinite.NULL, drop_arrays=False):
    """A copy of ``obj`` made of plain JSON types, non-finite numbers handled by ``nonfinite``."""
    policy = NonFinite.parse(nonfinite, "non-finite policy")

    def clean(value):
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()
                    if not (drop_arrays and isinstance(v, np.ndarray))}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, np.ndarray):
            return clean(value.tolist())
        if isinstance(value, Enum):
            return clean(value.value)
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, np.integer):
            return int(value)
        if isinstance(value, (float, np.floating)):
            return _float(float(value), policy)
        return value

    return clean(obj)


def from_jsonable(obj):
    """Inverse of ``to_jsonable(..., NonFinite.STRING)`` for the non-finite numbers."""
    if isinstance(obj, dict):
        return {k: from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_jsonable(v) for v in obj]
    if isinstance(obj, str) and obj in _AS_STRING:
        return _AS_STRING[obj]
    return obj
