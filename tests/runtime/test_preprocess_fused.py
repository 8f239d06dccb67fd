"""The fused X-ray path of ``preprocess`` is bit-identical to running the manifest's steps one by one.

Training, calibration, the benchmark and the bedside runtime all call ``preprocess``; these tests pin the fused
pass (LUT on 8-bit values, one resize, in-place standardize) to ``preprocess_stepwise``, the definition.
"""

import glob
import os

import numpy as np
import pytest

from lungedge.runtime import preprocess as P
from lungedge.runtime.errors import InputError

META = {"unit": "display", "intensity_max": 255.0, "format": "png"}


def _steps(size, low=0.5, high=99.5, mean=0.5, std=0.25):
    return [{"op": "scale_to_unit", "low_percentile": low, "high_percentile": high},
            {"op": "letterbox", "size": list(size)},
            {"op": "standardize", "mean": mean, "std": std}]


def _assert_same(array, steps, meta=META):
    assert P._fused_xray(array, meta, P._xray_plan(steps)) is not None, "the fused path was not taken"
    fast, fast_meta = P.preprocess(array, meta, steps)
    ref, ref_meta = P.preprocess_stepwise(array, meta, steps)
    assert fast.dtype == ref.dtype == np.float32 and fast.shape == ref.shape and fast.flags.c_contiguous
    np.testing.assert_array_equal(fast, ref)
    assert fast_meta == ref_meta


CASES = [  # (image shape, network size, percentiles, mean/std)
    ((256, 256), (128, 128), (0.5, 99.5), (0.5, 0.25)),
    ((256, 256), (224, 224), (0.5, 99.5), (0.5, 0.25)),
    ((599, 640), (128, 128), (1.0, 99.0), (0.45, 0.3)),
    ((100, 37), (64, 48), (0.0, 100.0), (0.5, 0.25)),
    ((17, 23), (64, 64), (2.0, 98.0), (0.5, 0.25)),  # enlarging: bilinear
    ((1, 300), (32, 32), (0.5, 99.5), (0.0, 1.0)),
    ((333, 129), (127, 131), (0.0, 99.9), (0.5, 0.25)),
]


@pytest.mark.parametrize("shape,size,pct,norm", CASES, ids=[f"{c[0]}->{c[1]}" for c in CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_fused_equals_stepwise_on_8bit_images(shape, size, pct, norm, seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, shape).astype(np.float32)
    if seed == 1:  # narrow, skewed range: most pixels clipped at one end
        img = np.minimum(rng.integers(0, 40, shape), 30).astype(np.float32) + 100
    _assert_same(img, _steps(size, *pct, *norm))


@pytest.mark.parametrize("view", [lambda a: a[::-1], lambda a: a[:, ::-2], lambda a: a.T, lambda a: a[3:50, 7:]])
def test_fused_accepts_views(view):
    img = view(np.random.default_rng(4).integers(0, 256, (64, 96)).astype(np.float32))
    _assert_same(img, _steps((32, 32)))


def test_fused_keeps_defaults_of_omitted_parameters():
    img = np.random.default_rng(3).integers(0, 256, (90, 70)).astype(np.float32)
    _assert_same(img, [{"op": "scale_to_unit"}, {"op": "letterbox"}, {"op": "standardize"}])


@pytest.mark.parametrize("make", [
    lambda rng: rng.uniform(0, 255, (64, 64)).astype(np.float32),  # fractions
    lambda rng: rng.integers(0, 4096, (64, 64)).astype(np.float32),  # 12-bit
    lambda rng: rng.integers(-100, 100, (64, 64)).astype(np.float32),  # negatives
    lambda rng: rng.integers(0, 256, (64, 64)).astype(np.float64),  # float64
    lambda rng: rng.integers(0, 256, (64, 64)).astype(np.uint8),  # raw bytes
])
def test_other_inputs_take_the_stepwise_path(make):
    img = make(np.random.default_rng(0))
    steps = _steps((32, 32))
    if img.dtype == np.float32:
        assert P._fused_xray(img, META, P._xray_plan(steps)) is None
    fast, fast_meta = P.preprocess(img, META, steps)
    ref, ref_meta = P.preprocess_stepwise(img, META, steps)
    np.testing.assert_array_equal(fast, ref)
    assert fast_meta == ref_meta


@pytest.mark.parametrize("bad,match", [(np.nan, "NaN"), (np.inf, "infinite")])
def test_bad_pixels_still_refused(bad, match):
    img = np.full((40, 40), 12, np.float32)
    img[5, 5] = bad
    with pytest.raises(InputError, match=match):
        P.preprocess(img, META, _steps((32, 32)))


def test_flat_image_still_refused():
    with pytest.raises(InputError, match="no contrast"):
        P.preprocess(np.full((40, 40), 9, np.float32), META, _steps((32, 32)))


@pytest.mark.parametrize("steps", [
    _steps((32, 32))[:2],
    [_steps((32, 32))[0], _steps((32, 32))[2], _steps((32, 32))[1]],
    P.ct_steps(32),
    [dict(_steps((32, 32))[0], extra=1)] + _steps((32, 32))[1:],
])
def test_only_the_exact_xray_recipe_is_fused(steps):
    assert P._xray_plan(steps) is None


def test_fused_equals_stepwise_on_real_xrays(xray_cls_dir):
    from lungedge.runtime.io import read_any

    files = sorted(glob.glob(os.path.join(xray_cls_dir, "images", "*.png")))[:40]
    assert files
    for f in files:
        array, meta = read_any(f)
        for size in (128, 224):
            _assert_same(array, P.xray_steps(size), meta)


@pytest.mark.parametrize("row", [[0.3, -1.2, 0.8], [1000.0, -1000.0], [5.0] * 7, [-3.5, 12.25, 0.0, 1e-3]])
def test_plain_python_softmax_equals_numpy(row):
    from lungedge.runtime.predictor import softmax, softmax_list

    np.testing.assert_allclose(softmax_list(row), softmax(np.asarray(row, np.float64)), rtol=0, atol=1e-15)
