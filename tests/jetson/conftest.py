"""Fixtures for the Jetson-side tests: a tiny self-testable bundle and small PNG images."""

import numpy as np
import pytest
from jetson_helpers import make_bundle
from tinymodels import square_image


@pytest.fixture
def bundle(tmp_path):
    return make_bundle(tmp_path / "xray-cls")


@pytest.fixture
def png_bytes():
    """Callable(seed) -> bytes of a small 8-bit PNG with a bright rectangle (distinct per seed)."""
    import cv2

    def encode(seed=0):
        img = square_image(96, 128, box=(20 + seed, 30, 60 + seed, 90 + seed))
        img = (img + np.random.default_rng(seed).integers(0, 8, img.shape)).astype(np.uint8)
        ok, buf = cv2.imencode(".png", img)
        assert ok
        return buf.tobytes()
    return encode
