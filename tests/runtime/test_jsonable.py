"""The one JSON cleaner: non-finite numbers by an explicit policy, numpy and enums to plain types."""

import json
import math

import numpy as np
import pytest

from lungedge.runtime.enums import Precision
from lungedge.runtime.errors import UnknownName
from lungedge.runtime.jsonable import NonFinite, from_jsonable, to_jsonable

RAW = {"a": np.float32(0.5), "b": (np.int64(3), np.bool_(True)), "inf": math.inf, "ninf": -math.inf,
       "nan": float("nan"), "p": Precision.INT8, 7: np.arange(2), "nested": [{"x": np.float64(math.inf)}]}


def test_null_policy_for_results_and_manifests():
    out = to_jsonable(RAW, NonFinite.NULL)
    assert out == {"a": 0.5, "b": [3, True], "inf": None, "ninf": None, "nan": None, "p": "int8", "7": [0, 1],
                   "nested": [{"x": None}]}
    json.dumps(out, allow_nan=False)
    assert "7" not in to_jsonable(RAW, "null", drop_arrays=True)


def test_string_policy_round_trips_for_benchmark_files():
    out = to_jsonable(RAW, NonFinite.STRING)
    assert (out["inf"], out["ninf"], out["nan"], out["nested"][0]["x"]) == ("inf", "-inf", "nan", "inf")
    back = from_jsonable(json.loads(json.dumps(out, allow_nan=False)))
    assert back["inf"] == math.inf and back["ninf"] == -math.inf and math.isnan(back["nan"])


def test_an_unknown_policy_is_refused():
    with pytest.raises(UnknownName, match="non-finite policy"):
        to_jsonable(RAW, "zero")
