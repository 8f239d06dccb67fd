"""Fixtures for the Jetson-side tests: a tiny self-testable bundle."""

import pytest
from jetson_helpers import make_bundle


@pytest.fixture
def bundle(tmp_path):
    return make_bundle(tmp_path / "xray-cls")
