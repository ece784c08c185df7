"""The tiny reference checkpoints converted by kamado (once per session, shared with tests/convert through its cache)."""

import pytest

from tests.convert.reference_models import converted_model


@pytest.fixture(scope="session")
def reference_gguf(shared, tmp_path_factory):
    """reference_gguf(name, outtype="f32") -> Path of the GGUF kamado wrote for ../shared/reference/convert/hf/NAME."""
    work = tmp_path_factory.mktemp("converted-models")
    return lambda name, outtype="f32": converted_model(shared, work, name, outtype)
