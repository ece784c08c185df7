"""Fixtures for converter tests; the conversion helper itself lives in reference_models.py for other tests to import."""

import pytest

from tests.convert.reference_models import converted_model


@pytest.fixture(scope="session")
def converted(shared, tmp_path_factory):
    """converted(name, outtype="f32") -> Path of the GGUF kamado wrote for reference model `name` (converted once)."""
    work = tmp_path_factory.mktemp("converted")
    return lambda name, outtype="f32": converted_model(shared, work, name, outtype)
