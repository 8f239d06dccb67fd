"""Shared preprocessing: CT windowing, X-ray scaling, letterbox geometry, step validation."""

import numpy as np
import pytest

from lungedge.runtime.errors import BundleError, InputError
from lungedge.runtime.preprocess import (
    check_steps,
    ct_steps,
    letterbox,
    preprocess,
    scale_to_unit,
    undo_letterbox,
    window_ct,
    xray_steps,
)


def test_window_ct_hu():
    hu = np.array([[-1350.0, -600.0], [150.0, 3000.0]], np.float32)
    out, _ = window_ct(hu, {"unit": "HU"}, center=-600, width=1500)
    np.testing.assert_allclose(out, [[0.0, 0.5], [1.0, 1.0]])


def test_window_ct_display_image_uses_its_range():
    img = np.array([[0, 255], [51, 102]], np.float32)
    out, _ = window_ct(img, {"unit": "display", "intensity_max": 255.0})
    np.testing.assert_allclose(out, [[0, 1], [0.2, 0.4]], atol=1e-6)


def test_scale_to_unit_and_flat_image():
    out, _ = scale_to_unit(np.array([[10, 20], [30, 50]], np.float32), {})
    assert out.min() == 0 and out.max() == 1
    with pytest.raises(InputError, match="no contrast"):
        scale_to_unit(np.full((4, 4), 7, np.float32), {})


def test_nan_is_refused():
    a = np.ones((40, 40), np.float32)
    a[3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        preprocess(a, {"unit": "display"}, xray_steps(32))


def test_letterbox_geometry_and_undo():
    img = np.zeros((100, 200), np.float32)
    img[40:60, 90:110] = 1
    out, meta = letterbox(img, {}, size=(64, 64))
    box = meta["letterbox"]
    assert out.shape == (64, 64) and box["content_w"] == 64 and box["content_h"] == 32 and box["pad_y"] == 16
    assert out[:16].max() == 0 and out[48:].max() == 0
    back = undo_letterbox((out > 0.5).astype(np.uint8), box)
    assert back.shape == (100, 200)
    assert back[50, 100] == 1 and back[0, 0] == 0


@pytest.mark.parametrize("steps", [xray_steps(48), ct_steps(48)])
def test_preprocess_output(steps):
    rng = np.random.default_rng(0)
    x, meta = preprocess(rng.uniform(0, 255, (70, 90)).astype(np.float32), {"unit": "display", "intensity_max": 255.0},
                         steps)
    assert x.shape == (1, 48, 48) and x.dtype == np.float32 and "letterbox" in meta


def test_unknown_step_or_parameter_is_a_bundle_error():
    with pytest.raises(BundleError, match="unknown preprocessing step"):
        check_steps([{"op": "sharpen"}])
    with pytest.raises(BundleError, match="unknown parameters"):
        check_steps([{"op": "letterbox", "size": [8, 8], "fill": 3}])


@pytest.mark.parametrize("seed", range(8))
def test_fast_percentiles_equal_numpy(seed):
    from lungedge.runtime.preprocess import percentiles

    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 300)), int(rng.integers(1, 300)))
    qs = (0.5, 99.5, float(rng.uniform(0, 100)))
    img = rng.integers(0, 256, shape).astype(np.float32)  # 8-bit valued: histogram path
    np.testing.assert_allclose(percentiles(img, qs), np.percentile(img, qs), rtol=0, atol=1e-9)
    img16 = rng.integers(0, 65536, shape).astype(np.float32)  # generic path
    np.testing.assert_allclose(percentiles(img16, qs), np.percentile(img16, qs), rtol=1e-6)
    frac = rng.uniform(0, 255, shape).astype(np.float32)
    np.testing.assert_allclose(percentiles(frac, qs), np.percentile(frac, qs), rtol=1e-6)


def test_equalize_by_hand_and_in_the_xray_steps():
    import numpy as np
    import pytest

    from lungedge.runtime.errors import InputError
    from lungedge.runtime.preprocess import check_steps, equalize, xray_steps

    out, _ = equalize(np.array([[0.0, 0.5], [0.5, 1.0]], np.float32), {})
    # Levels 0, 128, 255 with counts 1, 2, 1: the CDF above the first level, over the rest.
    assert np.allclose(out, [[0.0, 2 / 3], [2 / 3, 1.0]])
    with pytest.raises(InputError):
        equalize(np.full((4, 4), 0.3, np.float32), {})
    steps = xray_steps(64, equalize=True)
    assert [s["op"] for s in steps] == ["scale_to_unit", "equalize", "letterbox", "standardize"]
    check_steps(steps)
    assert [s["op"] for s in xray_steps(64)] == ["scale_to_unit", "letterbox", "standardize"]
